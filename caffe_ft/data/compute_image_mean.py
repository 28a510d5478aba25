"""compute_image_mean: the per-element mean of every Datum in a database, as
Caffe's tools/compute_image_mean.cpp computes and stores it."""
from __future__ import annotations

import os

import numpy as np

from caffe_ft.blobs import array_to_blob_proto
from caffe_ft.data.datum import datum_to_array, datum_where, parse_datum
from caffe_ft.data.lmdb_io import LMDBReader, check_backend
from caffe_ft.errors import CaffeError
from caffe_ft.glog import logger
from caffe_ft.protofile import write_binary

# Caffe logs progress every 10000 Datums.
_LOG_EVERY = 10000


def compute_image_mean(db: str | os.PathLike[str], backend: str = "lmdb") -> np.ndarray:
    """The C×H×W float32 mean of the Datums in `db`, in DB (key) order.

    Sums are float32, element by element in DB order, then divided by the
    count in float32: the same arithmetic as Caffe, so the result is
    bit-identical. Encoded Datums are decoded with their own channels.
    """
    check_backend(backend)
    total: np.ndarray | None = None
    shape: tuple[int, ...] = ()
    count = 0
    with LMDBReader(db) as reader:
        for key, value in reader:
            where = datum_where(db, key)
            datum = parse_datum(value, where)
            if total is None and datum.encoded:
                logger.info("Decoding Datum")
            values = datum_to_array(datum, where)
            if total is None:
                shape = values.shape
                total = np.zeros(values.size, np.float32)
                logger.info("Starting iteration")
            elif values.size != total.size:
                # Caffe compares sizes only, so a reshaped Datum still adds up.
                raise CaffeError(f"{where}: incorrect data field size {values.size}; expected "
                                 f"{total.size} ({'×'.join(map(str, shape))}) as in the "
                                 f"first Datum")
            total += values.reshape(-1)
            count += 1
            if count % _LOG_EVERY == 0:
                logger.info("Processed %d files.", count)
    if total is None:
        raise CaffeError(f"{os.fspath(db)}: the database holds no Datums to average")
    if count % _LOG_EVERY:
        logger.info("Processed %d files.", count)
    return (total / np.float32(count)).reshape(shape)


def write_mean(path: str | os.PathLike[str], mean: np.ndarray) -> None:
    """Save as Caffe does: a BlobProto with legacy dims (1, C, H, W)."""
    logger.info("Write to %s", os.fspath(path))
    write_binary(path, array_to_blob_proto(mean, legacy=True))


def channel_means(mean: np.ndarray) -> list[float]:
    """Each channel's average, summed in float32 in element order like Caffe,
    so the logged mean_value numbers match its log."""
    dim = np.float32(mean.shape[1] * mean.shape[2])
    return [float(np.cumsum(plane.reshape(-1), dtype=np.float32)[-1] / dim) for plane in mean]


def log_channel_means(mean: np.ndarray) -> None:
    logger.info("Number of channels: %d", mean.shape[0])
    for channel, value in enumerate(channel_means(mean)):
        logger.info("mean_value channel [%d]: %s", channel, format(value, "g"))
