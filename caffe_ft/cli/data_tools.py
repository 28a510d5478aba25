"""Runs `caffe_ft convert_imageset` and `caffe_ft compute_image_mean`, Caffe's
dataset tools (declared with their flags in caffe_ft.cli.actions)."""
from __future__ import annotations

from typing import Any

from caffe_ft.cli.actions import CONVERT_USAGE
from caffe_ft.data.compute_image_mean import compute_image_mean, log_channel_means, write_mean
from caffe_ft.data.convert_imageset import (
    ConvertOptions,
    convert_class_folders,
    convert_imageset,
)
from caffe_ft.data.heap import keep_freed_memory
from caffe_ft.errors import UsageError
from caffe_ft.glog import setup_logging


def convert_imageset_action(flags: dict[str, Any], args: list[str]) -> int:
    setup_logging()
    # This process only builds: let LMDB's per-commit buffers stay mapped
    # (the workers it forks inherit the setting).
    keep_freed_memory()
    options = ConvertOptions(
        gray=flags["gray"], shuffle=flags["shuffle"], backend=flags["backend"],
        resize_width=flags["resize_width"], resize_height=flags["resize_height"],
        check_size=flags["check_size"], encoded=flags["encoded"],
        encode_type=flags["encode_type"], seed=None if flags["seed"] < 0 else flags["seed"],
        workers=flags["workers"])
    if flags["from_folders"]:
        if len(args) != 2:
            raise UsageError(f"-from_folders takes ROOTFOLDER/ DB_NAME, got {len(args)} "
                             f"arguments")
        convert_class_folders(args[0], args[1], options)
    else:
        if len(args) != 3:
            raise UsageError(f"usage: caffe_ft convert_imageset {CONVERT_USAGE}")
        convert_imageset(args[0], args[1], args[2], options)
    return 0


def compute_image_mean_action(flags: dict[str, Any], args: list[str]) -> int:
    setup_logging()
    mean = compute_image_mean(args[0], flags["backend"])
    if len(args) == 2:
        write_mean(args[1], mean)
    log_channel_means(mean)
    return 0
