"""`caffe_ft convert_imageset` and `caffe_ft compute_image_mean`: Caffe's
dataset tools, with Caffe's flags."""
from __future__ import annotations

from typing import Any

from caffe_ft.cli import Flag, action
from caffe_ft.data.compute_image_mean import compute_image_mean, log_channel_means, write_mean
from caffe_ft.data.convert_imageset import (
    ConvertOptions,
    convert_class_folders,
    convert_imageset,
)
from caffe_ft.errors import UsageError
from caffe_ft.log import setup_logging

_CONVERT_USAGE = ("[flags] ROOTFOLDER/ LISTFILE DB_NAME\n"
                  "       caffe_ft convert_imageset -from_folders [flags] ROOTFOLDER/ DB_NAME")


@action("convert_imageset", "Convert a set of images to an LMDB of Datums", _CONVERT_USAGE,
        flags=[
            Flag("gray", False, "treat images as grayscale ones"),
            Flag("shuffle", False, "randomly shuffle the order of images and their labels"),
            Flag("backend", "lmdb", "the backend for storing the result (lmdb only)"),
            Flag("resize_width", 0, "width images are resized to"),
            Flag("resize_height", 0, "height images are resized to"),
            Flag("check_size", False, "check that all the Datums have the same size"),
            Flag("encoded", False, "store the encoded image in the Datum"),
            Flag("encode_type", "", "what type to encode the image as ('png','jpg',...)"),
            Flag("seed", -1, "seed of -shuffle; -1 draws one and logs it"),
            Flag("workers", 0, "image decoding processes; 0 uses every CPU"),
            Flag("from_folders", False,
                 "build from ROOTFOLDER/<class>/<image>; writes DB_NAME_list.txt and "
                 "DB_NAME_labels.txt (labels follow sorted class folder names)"),
        ], nargs=(2, 3))
def convert_imageset_action(flags: dict[str, Any], args: list[str]) -> int:
    setup_logging()
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
            raise UsageError(f"usage: caffe_ft convert_imageset {_CONVERT_USAGE}")
        convert_imageset(args[0], args[1], args[2], options)
    return 0


@action("compute_image_mean", "Compute the mean image of a database of Datums",
        "[-backend lmdb] INPUT_DB [OUTPUT_FILE]",
        flags=[Flag("backend", "lmdb", "the backend of the database (lmdb only)")],
        nargs=(1, 2))
def compute_image_mean_action(flags: dict[str, Any], args: list[str]) -> int:
    setup_logging()
    mean = compute_image_mean(args[0], flags["backend"])
    if len(args) == 2:
        write_mean(args[1], mean)
    log_channel_means(mean)
    return 0
