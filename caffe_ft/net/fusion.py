"""Which in-place layer chains the net runs as one step.

Caffe runs BatchNorm → Scale → ReLU in place on one blob; run layer by
layer under autograd, every step's top would be a tensor of its own, each
saved for backward. A layer that can compute such a chain itself (a
ChainHead, e.g. BatchNorm) saves only what the chain's backward needs.

The plan asks each head, layer by layer, whether it absorbs the next layer.
The net's side of the decision is the wiring: the follower must come right
after the chain, take the chain's blob as its only bottom and write it in
place as its only top, so no other layer reads the intermediate values, and
backward must flow through the chain alike (same detaches) and start from
no intermediate (no loss weight on the blob). The net only runs a chain
where nothing observes its inside: not when it keeps every blob's diff
(pycaffe, `time`), times layers one by one, is fed blob values, or runs a
layer range that cuts the chain.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol, runtime_checkable

import torch

from caffe_ft.layers.base import Layer


@runtime_checkable
class ChainHead(Protocol):
    """A layer that can run in-place followers as part of its own forward."""

    def absorbs(self, chain: Sequence[Layer], follower: Layer) -> bool:
        """Whether the chain (the head's followers so far) can take `follower` next."""

    def forward_chain(self, x: torch.Tensor, chain: Sequence[Layer]) -> list[torch.Tensor]:
        """The last follower's top: the head then every follower, as one step."""


class FusionPlan:
    """chains: head layer index → index of the last layer it absorbs."""

    def __init__(self, layers: Sequence[Layer], bottom_names: Sequence[Sequence[str]],
                 top_names: Sequence[Sequence[str]], bottom_detach: Sequence[Sequence[bool]],
                 top_detach: Sequence[bool], loss_tops: Sequence[tuple[str, float]]) -> None:
        self.chains: dict[int, int] = {}
        self._steps: dict[tuple[int, int, bool], list[tuple[int, int]]] = {}
        loss_names = {name for name, _ in loss_tops}
        i = 0
        while i < len(layers):
            head = layers[i]
            last = i
            if isinstance(head, ChainHead) and len(top_names[i]) == 1 and \
                    top_names[i][0] not in loss_names:
                blob, detached = top_names[i][0], top_detach[i]
                chain: list[Layer] = []
                for j in range(i + 1, len(layers)):
                    in_place = list(bottom_names[j]) == [blob] and list(top_names[j]) == [blob]
                    same_flow = list(bottom_detach[j]) == [detached] and top_detach[j] == detached
                    if not (in_place and same_flow and head.absorbs(chain, layers[j])):
                        break
                    chain.append(layers[j])
                    last = j
            if last > i:
                self.chains[i] = last
            i = last + 1

    def steps(self, start: int, end: int, fuse: bool) -> list[tuple[int, int]]:
        """(first, last) layer of each step of a forward over start..end: a
        chain where `fuse` allows it and the range holds all of it, else one
        layer. Worked out once per range: every pass asks."""
        key = (start, end, fuse)
        steps = self._steps.get(key)
        if steps is None:
            steps = self._steps[key] = list(self._walk(start, end, fuse))
        return steps

    def _walk(self, start: int, end: int, fuse: bool) -> Iterator[tuple[int, int]]:
        i = start
        while i <= end:
            last = self.chains.get(i, i) if fuse else i
            if last > end:
                last = i
            yield i, last
            i = last + 1
