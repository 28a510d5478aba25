"""Caffe's InsertSplits: a blob read by more than one consumer (or read and
also weighted as a loss) gets an explicit Split layer, so each consumer has
its own top and the gradients are summed — and blob names match Caffe's."""
from __future__ import annotations

from caffe_ft.proto import caffe_pb2


def split_layer_name(blob: str, layer: str, top_index: int) -> str:
    return f"{blob}_{layer}_{top_index}_split"


def split_blob_name(blob: str, layer: str, top_index: int, split_index: int) -> str:
    return f"{blob}_{layer}_{top_index}_split_{split_index}"


def insert_splits(net: caffe_pb2.NetParameter) -> caffe_pb2.NetParameter:
    layers = list(net.layer)
    producer: dict[str, tuple[int, int]] = {}  # blob → latest (layer, top index)
    consumers: dict[tuple[int, int], int] = {}
    bottom_source: dict[tuple[int, int], tuple[int, int]] = {}
    loss_weight: dict[tuple[int, int], float] = {}
    for i, layer in enumerate(layers):
        for j, name in enumerate(layer.bottom):
            if name not in producer:
                continue  # an unknown bottom; the net builder reports it with context
            src = producer[name]
            bottom_source[(i, j)] = src
            consumers[src] = consumers.get(src, 0) + 1
        for j, name in enumerate(layer.top):
            producer[name] = (i, j)
            if j < len(layer.loss_weight) and layer.loss_weight[j] != 0:
                loss_weight[(i, j)] = layer.loss_weight[j]
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    del out.layer[:]
    split_uses: dict[tuple[int, int], int] = {}
    for i, layer in enumerate(layers):
        copy = out.layer.add()
        copy.CopyFrom(layer)
        for j in range(len(layer.bottom)):
            src = bottom_source.get((i, j))
            if src is not None and _needs_split(src, consumers, loss_weight):
                k = split_uses.get(src, 0)
                split_uses[src] = k + 1
                src_layer = layers[src[0]]
                copy.bottom[j] = split_blob_name(src_layer.top[src[1]], src_layer.name, src[1], k)
        for j, name in enumerate(layer.top):
            if not _needs_split((i, j), consumers, loss_weight):
                continue
            split = out.layer.add()
            split.name = split_layer_name(name, layer.name, j)
            split.type = "Split"
            split.bottom.append(name)
            count = consumers.get((i, j), 0) + (1 if (i, j) in loss_weight else 0)
            for k in range(count):
                split.top.append(split_blob_name(name, layer.name, j, k))
            if (i, j) in loss_weight:
                # The loss moves to the split's first top, whose only consumer it is.
                split.loss_weight.append(loss_weight[(i, j)])
                split.loss_weight.extend([0.0] * (count - 1))
                # Caffe clears all of the producer's loss weights here, not only top j.
                del copy.loss_weight[:]
                split_uses[(i, j)] = 1
    return out


def _needs_split(src: tuple[int, int], consumers: dict[tuple[int, int], int],
                 loss_weight: dict[tuple[int, int], float]) -> bool:
    return consumers.get(src, 0) + (1 if src in loss_weight else 0) > 1
