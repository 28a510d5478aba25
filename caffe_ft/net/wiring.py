"""Caffe's Net::Init over a filtered, split-inserted NetParameter: the
layers and how they are wired.

Step by step as Caffe does it: create each layer (looked up in the registry
by type name: this module knows no layer), append its bottoms and tops (in
place when a top repeats the bottom at its index), set it up and log its top
shapes, set loss weights, append its params (caffe_ft.net.params), decide
whether it needs backward, then the reverse pass that prunes backward work.
"""
from __future__ import annotations

import math

from caffe_ft.blobs import shape_string
from caffe_ft.errors import CaffeError
from caffe_ft.layers.base import Layer, Shape
from caffe_ft.layers.families import layer_class
from caffe_ft.glog import logger
from caffe_ft.net.params import ParamTable
from caffe_ft.proto import caffe_pb2

# The name of a top Caffe adds where the prototxt names fewer (a loss layer's loss).
AUTO_TOP = "(automatic)"


class Wiring:
    """The layers of one net, their blobs and their backward plan."""

    def __init__(self, planned: caffe_pb2.NetParameter, phase: int, force_backward: bool,
                 source: str) -> None:
        self.phase = phase
        self.force_backward = force_backward
        self.source = source
        self.layers: list[Layer] = []
        self.bottom_names: list[list[str]] = []
        self.top_names: list[list[str]] = []
        # Per layer, the bottoms that must not receive a gradient (propagate_down: false).
        self.bottom_detach: list[list[bool]] = []
        self.top_detach: list[bool] = []
        self.loss_tops: list[tuple[str, float]] = []
        self.blob_shapes: dict[str, Shape] = {}
        self.blob_producer: dict[str, tuple[int, int]] = {}  # first (layer, top) to write it
        self.layer_need_backward: list[bool] = []
        self.params = ParamTable(force_backward)
        self.available: set[str] = set()  # blobs no layer consumes: the net's outputs
        self._blob_needs_backward: dict[str, bool] = {}
        self._memory = 0
        self._init_layers(planned)
        self._prune_backward()

    def _init_layers(self, planned: caffe_pb2.NetParameter) -> None:
        for i, lp in enumerate(planned.layer):
            if not lp.HasField("phase"):
                lp.phase = self.phase
            logger.info("Creating Layer %s", lp.name)
            layer = layer_class(lp.type)(lp, lp.phase)
            bottoms = self._append_bottoms(lp)
            tops = self._append_tops(layer, lp, bottoms)
            logger.info("Setting up %s", lp.name)
            self._set_up(i, layer, lp, bottoms, tops)
            learned = self.params.append(layer)
            self._decide_backward(layer, lp, bottoms, tops, learned)
            self.layers.append(layer)
            self.bottom_names.append(bottoms)
            self.top_names.append(tops)

    def _append_bottoms(self, lp: caffe_pb2.LayerParameter) -> list[str]:
        bottoms = list(lp.bottom)
        for j, name in enumerate(bottoms):
            if name not in self.blob_shapes:
                raise CaffeError(f"{self.source}: Unknown bottom blob '{name}' "
                                 f"(layer '{lp.name}', bottom index {j})")
            self.available.discard(name)
            logger.info("%s <- %s", lp.name, name)
        return bottoms

    def _append_tops(self, layer: Layer, lp: caffe_pb2.LayerParameter,
                     bottoms: list[str]) -> list[str]:
        tops = list(lp.top)
        for j, name in enumerate(tops):
            in_place = j < len(bottoms) and bottoms[j] == name
            if name in self.blob_shapes and not in_place:
                raise CaffeError(f"{self.source}: Top blob '{name}' produced by multiple "
                                 f"sources (layer '{lp.name}')")
            logger.info("%s -> %s", lp.name, name)
        while len(tops) < layer.num_tops:
            tops.append(f"{AUTO_TOP}{lp.name}#{len(tops)}")
        return tops

    def _set_up(self, index: int, layer: Layer, lp: caffe_pb2.LayerParameter,
                bottoms: list[str], tops: list[str]) -> None:
        """Layer::SetUp: params from the bottom shapes, top shapes, loss weights."""
        bottom_shapes = [self.blob_shapes[name] for name in bottoms]
        layer.setup(bottom_shapes)
        top_shapes = layer.reshape(bottom_shapes)
        if len(top_shapes) < len(tops):
            raise layer.error(f"produced {len(top_shapes)} top shape(s) for {len(tops)} tops")
        weights = self._loss_weights(layer, lp, len(tops))
        for j, (name, shape, weight) in enumerate(zip(tops, top_shapes, weights)):
            # A computed top too large for Caffe's blob fails here, naming the layer.
            shape = layer.check_shape(shape, f"top {j} ('{name}')")
            self.blob_producer.setdefault(name, (index, j))
            self.blob_shapes[name] = tuple(shape)
            logger.info("Top shape: %s", shape_string(shape))
            if weight:
                logger.info("    with loss weight %g", weight)
                self.loss_tops.append((name, weight))
            self._memory += math.prod(shape)
            if not name.startswith(AUTO_TOP):
                self.available.add(name)
        logger.info("Memory required for data: %d", self._memory * 4)

    def _loss_weights(self, layer: Layer, lp: caffe_pb2.LayerParameter, num_tops: int) -> list[float]:
        if not lp.loss_weight and layer.is_loss:
            lp.loss_weight.append(1.0)  # Caffe's LossLayer default, kept in the saved net
        weights = list(lp.loss_weight)
        if weights and len(weights) != num_tops:
            raise layer.error("loss_weight must be unspecified or specified once per top blob.")
        return weights or [0.0] * num_tops

    def _decide_backward(self, layer: Layer, lp: caffe_pb2.LayerParameter, bottoms: list[str],
                         tops: list[str], learned: bool) -> None:
        """Which bottoms get diffs (propagate_down, force_backward) and whether
        the layer needs backward at all, before the reverse pass prunes."""
        propagate = list(lp.propagate_down)
        if propagate and len(propagate) != len(bottoms):
            raise layer.error(f"propagate_down has {len(propagate)} entries; it needs 0 or "
                              f"one per bottom ({len(bottoms)})")
        detach = []
        for j, name in enumerate(bottoms):
            wants = self._blob_needs_backward.get(name, False) or (
                self.force_backward and layer.allow_force_backward(j))
            if propagate:
                wants = propagate[j]
            detach.append(not wants)
        # force_backward makes layers run backward and lets allowed bottoms
        # get diffs, but (as in Caffe) does not by itself mark their tops.
        need = any(not d for d in detach) or learned
        for name in tops:
            self._blob_needs_backward[name] = need or self._blob_needs_backward.get(name, False)
        self.layer_need_backward.append(need)
        self.bottom_detach.append(detach)

    def _prune_backward(self) -> None:
        """Caffe's reverse pass: a layer that does not contribute to any loss,
        or whose tops no consumer backpropagates into, runs no backward; its
        tops are detached so autograd computes nothing there either.
        force_backward then turns backward back on for every layer."""
        weights = dict(self.loss_tops)
        under_loss: set[str] = set()
        skip_backprop: set[str] = set()
        self.top_detach = [False] * len(self.layers)
        for i in reversed(range(len(self.layers))):
            tops = self.top_names[i]
            contributes = any(weights.get(t) or t in under_loss for t in tops)
            skip = all(t in skip_backprop for t in tops)
            if not self.force_backward and (not contributes or skip):
                self.layer_need_backward[i] = False
                self.top_detach[i] = True
                self.bottom_detach[i] = [True] * len(self.bottom_names[i])
            for j, name in enumerate(self.bottom_names[i]):
                if contributes:
                    under_loss.add(name)
                if self.bottom_detach[i][j]:
                    skip_backprop.add(name)
                else:
                    skip_backprop.discard(name)
            if self.force_backward:
                self.layer_need_backward[i] = True
        for i, layer in enumerate(self.layers):
            logger.info("%s %s backward computation.", layer.name,
                        "needs" if self.layer_need_backward[i] else "does not need")
