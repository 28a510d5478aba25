"""Caffe's data layers: the net's sources of images, labels and filler data.

Data (LMDB) and ImageData are Caffe's prefetching layers: their batches are
built by worker processes (caffe_ft.data.prefetch) through Caffe's
DataTransformer, in Caffe's item order. HDF5Data, MemoryData and DummyData
produce their tops in the forward pass, as Caffe's do; HDF5Output writes its
bottoms. Each layer knows its top shapes at setup, as Caffe's do: Data and
ImageData by reading their first image.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from google.protobuf.message import Message

from caffe_ft.data.datum import datum_where, parse_datum
from caffe_ft.data.db_cursor import first_record
from caffe_ft.data.hdf5_source import HDF5Rows
from caffe_ft.data.image_list import parse_list_file
from caffe_ft.data.prefetch import Prefetcher, default_workers, to_device, train_shard
from caffe_ft.data.rng import base_data_layer_seed, prefetching_layer_seeds
from caffe_ft.data.sources import BatchSource, DatumSource, ImageListSource, Shard
from caffe_ft.data.transformer import DataTransformer, load_mean_file, rand_calls_per_item
from caffe_ft.data.windows import WindowFile, WindowSource, read_window_file
from caffe_ft.errors import CaffeError
from caffe_ft.fillers import FILLERS as KNOWN_FILLERS
from caffe_ft.fillers import fill
from caffe_ft.layers.base import TRAIN, Layer, Shape
from caffe_ft.layers.registry import register
from caffe_ft.glog import logger
from caffe_ft.proto import caffe_pb2
from caffe_ft.rng.c_rand import C_RAND

LEVELDB = caffe_pb2.DataParameter.LEVELDB


def _shape_text(shape: Sequence[int]) -> str:
    return ",".join(str(d) for d in shape)


def _warn_ignored(layer: Layer, message: Message, fields: Sequence[str]) -> None:
    """Caffe ignores the deprecated transform fields of data_param and
    image_data_param in a V2 net (only the V1 upgrade moves them); say so."""
    for field in fields:
        if message.HasField(field):
            logger.warning("Layer '%s': %s.%s is deprecated and ignored, as in Caffe; set it "
                           "in transform_param", layer.name, message.DESCRIPTOR.name, field)


class _SourceLayer(Layer):
    """A layer with no bottoms whose tops are made on the CPU and moved to the
    net's device, known from a buffer that moves with the net."""
    bottoms = (0, 0)

    def __init__(self, param: caffe_pb2.LayerParameter, phase: int) -> None:
        super().__init__(param, phase)
        self.register_buffer("device_anchor", torch.empty(0), persistent=False)
        self.top_shapes: list[Shape] = []

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        return list(self.top_shapes)


class _PrefetchingLayer(_SourceLayer):
    """Caffe's BasePrefetchingDataLayer: batches come from a Prefetcher."""
    prefetcher: Prefetcher

    def make_transformer(self) -> DataTransformer:
        return DataTransformer(self.param.transform_param, self.phase,
                               f"Layer '{self.name}' ({self.param.type})")

    def start(self, source: BatchSource, item_shape: Shape) -> None:
        size = source.batch_size
        self.top_shapes = [(size, *item_shape), (size,)][:len(self.param.top)]
        logger.info("output data size: %s", _shape_text(self.top_shapes[0]))
        # Caffe reads the prefetch depth from data_param for every prefetching layer.
        self.prefetcher = Prefetcher(source, default_workers(), self.param.data_param.prefetch,
                                     self.top_shapes)

    def forward(self) -> list[torch.Tensor]:
        return self.prefetcher.next(self.device_anchor.device)


@register("Data")
class Data(_PrefetchingLayer):
    """Datums from an LMDB in key order, wrapping to the first after the last;
    raw, encoded or float_data Datums; the label top is optional. In TRAIN
    under torch.distributed, rank r keeps records r, r + size, ... as Caffe's
    Skip() does across solvers."""
    tops = (1, 2)

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        param = self.param.data_param
        if param.backend == LEVELDB:
            if (Path(param.source) / "data.mdb").is_file():
                hint = f"{param.source} is an LMDB: add `backend: LMDB` to data_param"
            else:
                hint = "rebuild it with convert_imageset -backend lmdb and set `backend: LMDB`"
            raise self.error(f"data_param.backend LEVELDB (Caffe's default) is not supported: "
                             f"caffe_ft reads LMDB only; {hint}")
        if param.batch_size <= 0:
            raise self.error("data_param.batch_size must be > 0")
        _warn_ignored(self, param, ("scale", "mean_file", "crop_size", "mirror", "rand_skip",
                                    "force_encoded_color"))
        transformer = self.make_transformer()
        count, key, value = first_record(param.source)
        logger.info("Opened lmdb %s", param.source)
        where = datum_where(param.source, key)
        pixels = transformer.datum_pixels(parse_datum(value, where), where)
        shard = train_shard() if self.phase == TRAIN else Shard()
        # Each rank draws its own augmentations, as each Caffe solver has its own generator.
        # Taken with or without a transformer generator: Caffe always draws the thread's seed.
        seed = prefetching_layer_seeds(transformer.needs_rng, 0).transformer
        seed = (seed + shard.rank) & 0xFFFFFFFF if transformer.needs_rng else 0
        source = DatumSource(param.source, count, param.batch_size, transformer, seed,
                             labels=len(self.param.top) == 2, shard=shard)
        self.start(source, transformer.output_shape(pixels, where))


@register("ImageData")
class ImageData(_PrefetchingLayer):
    """Images named in a list file (`path label`, split at the last space),
    opened as root_folder + path, optionally resized and shuffled. As in
    Caffe, every rank reads the whole list (shuffle it for data parallelism)."""
    tops = (2, 2)

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        param = self.param.image_data_param
        if (param.new_height > 0) != (param.new_width > 0):
            raise self.error("new_height and new_width must be set together")
        if param.batch_size <= 0:
            raise self.error("image_data_param.batch_size must be > 0")
        _warn_ignored(self, param, ("scale", "mean_file", "crop_size", "mirror"))
        transformer = self.make_transformer()
        logger.info("Opening file %s", param.source)
        entries = parse_list_file(param.source)
        for entry in entries:
            if entry.is_blank:
                raise self.error(f"{param.source}:{entry.line}: blank line; every line must "
                                 f"be 'PATH LABEL'")
        if not entries:
            raise self.error(f"{param.source}: File is empty")
        seeds = prefetching_layer_seeds(transformer.needs_rng,
                                        int(param.shuffle) + int(param.rand_skip > 0))
        own_draws = iter(seeds.layer)  # Caffe's order: the shuffle seed, then the skip
        shuffle_seed = None
        if param.shuffle:
            logger.info("Shuffling data")
            shuffle_seed = next(own_draws)
        elif self.phase == TRAIN and train_shard().rank > 0 and not param.rand_skip:
            logger.warning("Shuffling or skipping recommended for multi-GPU")
        logger.info("A total of %d images.", len(entries))
        skip = 0
        if param.rand_skip:
            skip = next(own_draws) % param.rand_skip
            logger.info("Skipping first %d data points.", skip)
            if skip >= len(entries):
                raise self.error(f"Not enough points to skip: rand_skip drew {skip} for "
                                 f"{len(entries)} images")
        source = ImageListSource(param.source, entries, param.root_folder, param.new_height,
                                 param.new_width, param.is_color, param.batch_size,
                                 transformer, seeds.transformer, shuffle_seed, skip)
        # Caffe reads the first image at setup to size the tops.
        pixels, _, where = source.read_item(0)
        self.start(source, transformer.output_shape(pixels, where))


@register("HDF5Data")
class HDF5Data(_SourceLayer):
    """Rows of HDF5 datasets named after the tops, file after file; no
    transform (Caffe refuses transform_param here)."""
    tops = (1, None)

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        if self.param.HasField("transform_param"):
            raise self.error("HDF5Data does not transform data; remove transform_param")
        param = self.param.hdf5_data_param
        if param.batch_size <= 0:
            raise self.error("hdf5_data_param.batch_size must be > 0")
        logger.info("Loading list of HDF5 filenames from: %s", param.source)
        shard = train_shard() if self.phase == TRAIN else Shard()
        self.rows = HDF5Rows(h5py, param.source, list(self.param.top), param.batch_size,
                             C_RAND if param.shuffle else None, shard)
        logger.info("Number of HDF5 files: %d", len(self.rows.files))
        self.top_shapes = self.rows.top_shapes()

    def forward(self) -> list[torch.Tensor]:
        device = self.device_anchor.device
        return [to_device(torch.from_numpy(array), device) for array in self.rows.next_batch()]


def _legacy_4d(layer: Layer, tensor: torch.Tensor, what: str) -> tuple[int, int, int, int]:
    """Caffe's (num, channels, height, width) of a blob of up to 4 axes."""
    if tensor.dim() > 4:
        raise layer.error(f"{what} has {tensor.dim()} axes; HDF5Output writes blobs of at "
                          f"most 4 (num, channels, height, width)")
    dims = tuple(tensor.shape) + (1,) * (4 - tensor.dim())
    return dims[0], dims[1], dims[2], dims[3]


@register("HDF5Output")
class HDF5Output(Layer):
    """Writes bottom 0 and bottom 1 as datasets "data" and "label" (4-D) of
    file_name. Caffe creates the file at setup and can write one forward
    pass only: a second pass finds the datasets there and fails."""
    bottoms = (2, 2)
    tops = (0, 0)

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        self.h5py = h5py
        self.file_name = self.param.hdf5_output_param.file_name
        try:
            self.h5py.File(self.file_name, "w").close()
        except OSError as err:
            raise self.error(f"Failed to open HDF5 file {self.file_name}: {err}") from None

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        return []

    def forward(self, data: torch.Tensor, label: torch.Tensor) -> list[torch.Tensor]:
        if data.shape[0] != label.shape[0]:
            raise self.error(f"data blob and label blob must have the same batch size "
                             f"({data.shape[0]} vs {label.shape[0]})")
        logger.info("Saving HDF5 file %s", self.file_name)
        with self.h5py.File(self.file_name, "r+") as handle:
            for name, tensor in (("data", data), ("label", label)):
                if name in handle:
                    raise self.error(f"{self.file_name} already holds dataset '{name}': Caffe's "
                                     f"HDF5Output writes a single forward pass per file")
                values = tensor.detach().to("cpu", torch.float32).numpy()
                handle.create_dataset(name, data=values.reshape(_legacy_4d(self, tensor, name)))
        logger.info("Successfully saved %d rows", data.shape[0])
        return []


@register("MemoryData")
class MemoryData(_SourceLayer):
    """Batches of arrays given from Python with set_input_arrays (pycaffe's
    Net.set_input_arrays → MemoryDataLayer::Reset), served in order and
    wrapping; no transform is applied to them, as in Caffe."""
    tops = (2, 2)

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        param = self.param.memory_data_param
        self.batch_size = int(param.batch_size)
        self.item_shape = (int(param.channels), int(param.height), int(param.width))
        if self.batch_size * int(np.prod(self.item_shape)) <= 0:
            raise self.error("batch_size, channels, height, and width must be specified and "
                             "positive in memory_data_param")
        self.top_shapes = [(self.batch_size, *self.item_shape), (self.batch_size,)]
        transform = self.param.transform_param
        base_data_layer_seed(rand_calls_per_item(transform.mirror, transform.crop_size,
                                                 self.phase) > 0)
        self.data: torch.Tensor | None = None
        self.labels = torch.empty(0)
        self.pos = 0

    def set_input_arrays(self, data: Any, labels: Any) -> None:
        """Serve `data` (N×C×H×W) and `labels` (N, or N×1×1×1) from the next
        forward on, N a multiple of batch_size. A float32 C-contiguous numpy
        array is used in place, not copied, as pycaffe keeps the array."""
        data_tensor = torch.as_tensor(np.ascontiguousarray(data, dtype=np.float32))
        label_tensor = torch.as_tensor(np.ascontiguousarray(labels, dtype=np.float32))
        if data_tensor.dim() != 4 or tuple(data_tensor.shape[1:]) != self.item_shape:
            raise self.error(f"data array has shape {list(data_tensor.shape)}; expected "
                             f"N×{'×'.join(map(str, self.item_shape))}")
        count = data_tensor.shape[0]
        if label_tensor.dim() == 4 and tuple(label_tensor.shape[1:]) == (1, 1, 1):
            label_tensor = label_tensor.reshape(-1)
        if label_tensor.dim() != 1 or label_tensor.shape[0] != count:
            raise self.error(f"labels array has shape {list(label_tensor.shape)}; expected "
                             f"({count},) or ({count}, 1, 1, 1), one label per image")
        if count == 0 or count % self.batch_size:
            raise self.error(f"{count} images given: the number must be a positive multiple "
                             f"of batch_size {self.batch_size}")
        if self.param.HasField("transform_param"):
            logger.warning("MemoryData does not transform array data on Reset()")
        self.data, self.labels, self.pos = data_tensor, label_tensor, 0

    def forward(self) -> list[torch.Tensor]:
        if self.data is None:
            raise self.error("MemoryData needs to be initialized by calling set_input_arrays "
                             "(Caffe's Reset) before the first forward")
        device = self.device_anchor.device
        stop = self.pos + self.batch_size
        data = to_device(self.data[self.pos:stop], device)
        labels = to_device(self.labels[self.pos:stop].reshape(self.batch_size, 1, 1, 1), device)
        self.pos = stop % self.data.shape[0]
        return [data, labels]


@register("DummyData")
class DummyData(Layer):
    """Tops filled by fillers (none: constant 0; one: for every top; else one
    per top). Constant tops are filled once at setup, the others at every
    forward, as Caffe does; tops are the same tensors each pass."""
    bottoms = (0, 0)
    tops = (1, None)

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        param = self.param.dummy_data_param
        count = len(self.param.top)
        fillers = list(param.data_filler) or [caffe_pb2.FillerParameter(type="constant")]
        if len(fillers) not in (1, count):
            raise self.error(f"Number of data fillers must be 0, 1 or equal to the number of "
                             f"tops: {count}; you specified {len(fillers)} data fillers.")
        for filler in fillers:
            if filler.type not in KNOWN_FILLERS:
                raise self.error(f"Unknown filler type: {filler.type} (known: "
                                 f"{', '.join(KNOWN_FILLERS)})")
        self.fillers = fillers
        for j, shape in enumerate(self._shapes(param, count)):
            self.register_buffer(f"top{j}", self.zeros(shape, f"top {j}"))
            if self.filler(j).type == "constant":
                fill(self.persistent_top(j), self.filler(j))

    def _shapes(self, param: caffe_pb2.DummyDataParameter, count: int) -> list[Shape]:
        legacy = {"num": param.num, "channels": param.channels, "height": param.height,
                  "width": param.width}
        if any(len(values) for values in legacy.values()):
            if len(param.shape):
                raise self.error("Both shape and legacy fields were specified")
            for name, values in legacy.items():
                if len(values) not in (1, count):
                    raise self.error(f"Must specify '{name}' once, or once per top blob "
                                     f"({count}); specified {len(values)}.")
            return [tuple(int(values[0 if len(values) == 1 else j]) for values in legacy.values())
                    for j in range(count)]
        if len(param.shape) not in (1, count):
            raise self.error(f"Must specify 'shape' once, or once per top blob ({count}); "
                             f"specified {len(param.shape)}.")
        return [tuple(int(d) for d in param.shape[0 if len(param.shape) == 1 else j].dim)
                for j in range(count)]

    def filler(self, index: int) -> caffe_pb2.FillerParameter:
        return self.fillers[0 if len(self.fillers) == 1 else index]

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        return [tuple(self.persistent_top(j).shape) for j in range(len(self.param.top))]

    def persistent_top(self, index: int) -> torch.Tensor:
        return getattr(self, f"top{index}")

    def forward(self) -> list[torch.Tensor]:
        tops = [self.persistent_top(j) for j in range(len(self.param.top))]
        for j, top in enumerate(tops):
            if self.filler(j).type != "constant":
                fill(top, self.filler(j))
        return tops


@register("WindowData")
class WindowData(_PrefetchingLayer):
    """R-CNN's window sampler (see caffe_ft.data.windows): each batch holds
    batch_size - int(batch_size * fg_fraction) background windows, then the
    foreground ones, warped with context_pad to transform_param.crop_size,
    mirrored at random with transform_param.mirror, minus the mean_file or
    mean_value, times window_data_param.scale."""
    tops = (2, 2)

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        param = self.param.window_data_param
        transform = self.param.transform_param
        logger.info("Window data layer:\n  foreground (object) overlap threshold: %g\n"
                    "  background (non-object) overlap threshold: %g\n"
                    "  foreground sampling fraction: %g\n  cache_images: %d\n  root_folder: %s",
                    param.fg_threshold, param.bg_threshold, param.fg_fraction,
                    param.cache_images, param.root_folder)
        _warn_ignored(self, param, ("mean_file", "crop_size", "mirror"))
        for name in ("scale", "force_color", "force_gray"):
            if transform.HasField(name):
                logger.warning("Layer '%s': transform_param.%s is ignored by WindowData, as in "
                               "Caffe (it scales by window_data_param.scale and reads color)",
                               self.name, name)
        if param.batch_size <= 0:
            raise self.error("window_data_param.batch_size must be > 0")
        crop = int(transform.crop_size)
        if crop <= 0:
            raise self.error("transform_param.crop_size must be > 0: the size every window is "
                             "warped to")
        if 2 * param.context_pad >= crop:
            raise self.error(f"context_pad {param.context_pad} leaves no room for the window "
                             f"in a {crop}x{crop} crop")
        if param.crop_mode not in ("warp", "square"):
            logger.warning("Layer '%s': crop_mode '%s' is not 'square', so windows are warped "
                           "(as Caffe does)", self.name, param.crop_mode)
        try:
            windows = read_window_file(param.source, param.root_folder, param.fg_threshold,
                                       param.bg_threshold)
        except CaffeError as err:
            raise self.error(str(err)) from None
        for index, image, channels, height, width, count in windows.headers:
            if index % 100 == 0:
                logger.info("num: %d %s %d %d %d windows to process: %d", index, image,
                            channels, height, width, count)
        logger.info("Number of images: %d", len(windows.images))
        for label, count in sorted(windows.class_counts.items()):
            logger.info("class %d has %d samples", label, count)
        logger.info("Amount of context padding: %d", param.context_pad)
        logger.info("Crop mode: %s", param.crop_mode)
        if not windows.foreground or not windows.background:
            raise self.error(f"{param.source} holds {len(windows.foreground)} foreground and "
                             f"{len(windows.background)} background windows; a batch needs "
                             f"both (check fg_threshold and bg_threshold)")
        if windows.channels != 3:
            raise self.error(f"{param.source}: images have {windows.channels} channels; "
                             f"WindowData reads every image in color (3 channels)")
        source = WindowSource(windows, param.batch_size, crop, bool(transform.mirror),
                              param.context_pad, param.crop_mode == "square", param.fg_fraction,
                              param.scale, self._mean(crop), self._mean_values(),
                              self._seed(), labels=True,
                              cached=self._cache(windows) if param.cache_images else None)
        self.start(source, (windows.channels, crop, crop))

    def _mean(self, crop: int) -> np.ndarray | None:
        transform = self.param.transform_param
        if not transform.HasField("mean_file"):
            return None
        if len(transform.mean_value):
            raise self.error("Cannot specify mean_file and mean_value at the same time")
        logger.info("Loading mean file from: %s", transform.mean_file)
        mean = load_mean_file(transform.mean_file)
        offset = (mean.shape[2] - crop) // 2
        if mean.shape[0] != 3 or mean.shape[2] < crop or mean.shape[1] < offset + crop:
            raise self.error(f"mean_file {transform.mean_file} is "
                             f"{'x'.join(map(str, mean.shape))}; WindowData needs 3 channels "
                             f"and room for the {crop}x{crop} crop at its centre")
        return mean

    def _mean_values(self) -> np.ndarray:
        values = np.asarray(self.param.transform_param.mean_value, np.float32)
        if values.size not in (0, 1, 3):
            raise self.error(f"Specify either 1 mean_value or as many as channels: 3 (got "
                             f"{values.size})")
        return np.repeat(values, 3) if values.size == 1 else values

    def _seed(self) -> int:
        """The sampler's seed: Caffe's DataLayerSetUp draws it whenever mirror
        or crop_size is set (crop_size always is), between the two
        InitRand draws of the DataTransformer the layer makes but never uses."""
        transform = self.param.transform_param
        transformer_rng = transform.mirror or (self.phase == TRAIN and transform.crop_size > 0)
        seed = prefetching_layer_seeds(transformer_rng, 1).layer[0]
        # Each rank samples its own windows, as each Caffe solver has its own generator.
        shard = train_shard() if self.phase == TRAIN else Shard()
        return (seed + shard.rank) & 0xFFFFFFFF

    def _cache(self, windows: WindowFile) -> dict[int, bytes]:
        """cache_images: every image file's bytes, read once at setup."""
        cached = {}
        for index, path in enumerate(windows.images):
            try:
                with open(path, "rb") as handle:
                    cached[index] = handle.read()
            except OSError as err:
                raise self.error(f"Could not open or find file {path} "
                                 f"({err.strerror or err})") from None
        return cached
