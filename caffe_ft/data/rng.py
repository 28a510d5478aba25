"""The seeds Caffe's data layers take from its global generator
(caffe_rng_rand(), caffe_ft.rng.global_rng) as they set up, in Caffe's
order, so that their streams (caffe_ft.rng.engine.CaffeRNG: the
DataTransformer's Rand(n) and caffe::shuffle) are Caffe's own.
"""
from __future__ import annotations

from dataclasses import dataclass

from caffe_ft.rng.global_rng import caffe_rng


@dataclass(frozen=True)
class PrefetchSeeds:
    """The seeds a prefetching data layer keeps from its setup draws."""
    transformer: int  # DataTransformer's generator; 0 when it has none
    layer: list[int]  # the layer's own DataLayerSetUp draws, in order


def prefetching_layer_seeds(transformer_needs_rng: bool, layer_draws: int) -> PrefetchSeeds:
    """Take the caffe_rng_rand() draws a BasePrefetchingDataLayer makes while
    it sets up, in Caffe's order: DataTransformer::InitRand (only when the
    transformer needs a generator), the layer's `layer_draws` own draws in
    DataLayerSetUp, InitRand again (the seed the transformer keeps: the
    first one is replaced), and StartInternalThread's seed for the prefetch
    thread, which no data path uses. Taking every one of them keeps the
    seeds of the layers set up after this one Caffe's."""
    wanted = 2 * int(transformer_needs_rng) + layer_draws
    with caffe_rng() as stream:
        values = [int(v) for v in stream.take(wanted + 1)]
    own = values[int(transformer_needs_rng):][:layer_draws]
    return PrefetchSeeds(values[wanted - 1] if transformer_needs_rng else 0, own)


def base_data_layer_seed(transformer_needs_rng: bool) -> None:
    """The draw BaseDataLayer::LayerSetUp's DataTransformer::InitRand takes
    for a non-prefetching data layer (MemoryData), whose arrays are never
    transformed: taking it keeps the layers set up after it Caffe's."""
    if transformer_needs_rng:
        with caffe_rng() as stream:
            stream.take(1)
