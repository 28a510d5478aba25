"""Which device an action runs on: Caffe's -gpu flag as device ids, and the
torch device of the first, with Caffe's log lines; and the one-line error
of a device that runs out of memory."""
from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import TypeVar

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


Action = TypeVar("Action", bound=Callable[..., int])


def out_of_memory_is_an_error(action: Action) -> Action:
    """A run that exhausts its device's memory (a batch too large for the
    GPU, most often) ends with one line, as Caffe's failed CUDA check ends
    it, not with torch's allocator traceback."""
    @functools.wraps(action)
    def run(*args: object, **kwargs: object) -> int:
        try:
            return action(*args, **kwargs)
        except torch.cuda.OutOfMemoryError as err:
            tried = re.search(r"[Tt]ried to allocate ([\d.]+ \w+)", str(err))
            raise CaffeError(
                "out of memory on the device" + (f" (tried to allocate {tried[1]})" if tried
                                                 else "") +
                "; lower the data layers' batch_size (with iter_size to keep the effective "
                "batch), or train with -precision bf16") from None
    return run  # type: ignore[return-value]
