"""Which device an action runs on: Caffe's -gpu flag as device ids, and the
torch device of the first, with Caffe's log lines."""
from __future__ import annotations

import torch

from caffe_ft.errors import CaffeError, UsageError
from caffe_ft.glog import logger


def gpu_ids(flag: str) -> list[int]:
    """-gpu as Caffe parses it: '' none, 'all' every device, else a list."""
    if flag == "all":
        return list(range(torch.cuda.device_count()))
    if not flag:
        return []
    try:
        ids = [int(part) for part in flag.split(",")]
    except ValueError:
        raise UsageError(f"-gpu takes device ids separated by ',' or 'all', got '{flag}'") \
            from None
    available = torch.cuda.device_count()
    for device in ids:
        if not 0 <= device < available:
            raise CaffeError(f"-gpu {flag}: there is no CUDA device {device} ("
                             f"{available} device(s) visible to torch)")
    return ids


def device_for(ids: list[int]) -> torch.device:
    if ids:
        logger.info("Use GPU with device ID %d", ids[0])
        logger.info("GPU device name: %s", torch.cuda.get_device_name(ids[0]))
        return torch.device("cuda", ids[0])
    logger.info("Use CPU.")
    return torch.device("cpu")
