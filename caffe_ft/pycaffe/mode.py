"""pycaffe's process-wide settings: Caffe::set_mode (CPU or GPU), the
device, and the random seed. A Net or Solver made afterwards runs where the
mode says."""
from __future__ import annotations

import logging

import torch

from caffe_ft.errors import CaffeError
from caffe_ft.glog import logger, setup_logging

_GLOG_LEVELS = {0: logging.INFO, 1: logging.WARNING, 2: logging.ERROR, 3: logging.CRITICAL}

_device = torch.device("cpu")


def set_mode_cpu() -> None:
    global _device
    _device = torch.device("cpu")


def set_mode_gpu() -> None:
    global _device
    if not torch.cuda.is_available():
        raise CaffeError("set_mode_gpu: no CUDA device is available to torch")
    _device = torch.device("cuda", torch.cuda.current_device())


def set_device(device_id: int) -> None:
    global _device
    if torch.cuda.is_available():
        torch.cuda.set_device(device_id)
        if _device.type == "cuda":
            _device = torch.device("cuda", device_id)


def set_random_seed(seed: int) -> None:
    torch.manual_seed(seed)


def device() -> torch.device:
    """Where nets made now compute: the CPU, or the GPU set_mode_gpu chose."""
    return _device


def init_log(level: int = 0) -> None:
    """Send caffe_ft's log to stderr in glog's format (pycaffe's init_log;
    glog's levels: 0 INFO, 1 WARNING, 2 ERROR, 3 FATAL)."""
    setup_logging(_GLOG_LEVELS.get(level, logging.INFO))


def log(message: str) -> None:
    """One INFO line in the log, as pycaffe's caffe.log."""
    logger.info("%s", message)
