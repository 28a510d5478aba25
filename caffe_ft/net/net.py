"""The net: a filtered, split-inserted NetParameter built into torch modules.

Mirrors Caffe's Net::Init — layer by layer it wires bottoms to tops
(in-place when a top repeats the bottom at its index), sets up parameter
blobs, infers and logs top shapes, resolves loss weights, shares params by
name and decides which params get gradients — and Net::Forward/Backward on
top of autograd. Layers are looked up in the registry by type name; this
module knows no layer.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from caffe_ft.blobs import shape_string
from caffe_ft.errors import CaffeError
from caffe_ft.layers.base import Layer, Shape
from caffe_ft.layers.registry import check_supported, layer_class
from caffe_ft.log import logger
from caffe_ft.net.filter import filter_net
from caffe_ft.net.splits import insert_splits
from caffe_ft import parity
from caffe_ft.proto import caffe_pb2

AUTO_TOP = "(automatic)"


@dataclass
class LearnableParam:
    """A parameter blob the solver updates (owners only; sharers point here)."""
    layer: str
    index: int
    blob: nn.Parameter
    lr_mult: float
    decay_mult: float

    @property
    def display_name(self) -> str:
        return f"{self.layer}/{self.index}"


class Net(nn.Module):
    def __init__(self, param: caffe_pb2.NetParameter, phase: int | None = None, level: int = 0,
                 stages: Iterable[str] = (), source: str = "<net>") -> None:
        super().__init__()
        parity.apply_default()
        self.source = source
        state = caffe_pb2.NetState()
        state.CopyFrom(param.state)
        if phase is not None:
            state.phase = phase
            state.level = level
            state.stage.extend(stages)
        self.state = state
        self.phase = state.phase
        self.name = param.name
        self.force_backward = param.force_backward
        filtered = filter_net(param, state, source)
        check_supported(((lp.name, lp.type) for lp in filtered.layer), source)
        planned = insert_splits(filtered)
        logger.info("Initializing net from parameters: name: \"%s\", state: phase: %s",
                    self.name, caffe_pb2.Phase.Name(self.phase))

        self.layers = nn.ModuleList()
        self.bottom_names: list[list[str]] = []
        self.top_names: list[list[str]] = []
        # Per layer, the bottoms that must not receive a gradient (propagate_down: false).
        self.bottom_detach: list[list[bool]] = []
        self.loss_tops: list[tuple[str, float]] = []
        self.blob_shapes: dict[str, Shape] = {}
        self.blob_producer: dict[str, tuple[int, int]] = {}  # first (layer, top) to write it
        self.learnable_params: list[LearnableParam] = []
        self.layer_need_backward: list[bool] = []
        # id(owner blob) → whether its lr_mult / decay_mult were set explicitly.
        self._explicit_mults: dict[int, tuple[bool, bool]] = {}
        self._build(planned)
        self.output_names = sorted(self._available)
        for name in self.output_names:
            logger.info("This network produces output %s", name)
        logger.info("Network initialization done.")
        self.retain_blob_diffs = False
        self._values: dict[str, torch.Tensor] = {}
        self._diff_source: dict[str, torch.Tensor] = {}
        self._seeds: dict[str, torch.Tensor] = {}  # diffs given to the last backward

    # -- construction --------------------------------------------------
    def _build(self, planned: caffe_pb2.NetParameter) -> None:
        self._available: set[str] = set()
        blob_needs_backward: dict[str, bool] = {}
        param_owner: dict[str, tuple[int, int]] = {}
        memory = 0
        for i, lp in enumerate(planned.layer):
            if not lp.HasField("phase"):
                lp.phase = self.phase
            logger.info("Creating Layer %s", lp.name)
            layer = layer_class(lp.type)(lp, lp.phase)
            bottoms = list(lp.bottom)
            for j, name in enumerate(bottoms):
                if name not in self.blob_shapes:
                    raise CaffeError(f"{self.source}: Unknown bottom blob '{name}' "
                                     f"(layer '{lp.name}', bottom index {j})")
                self._available.discard(name)
                logger.info("%s <- %s", lp.name, name)
            tops = list(lp.top)
            for j, name in enumerate(tops):
                in_place = j < len(bottoms) and bottoms[j] == name
                if name in self.blob_shapes and not in_place:
                    raise CaffeError(f"{self.source}: Top blob '{name}' produced by multiple "
                                     f"sources (layer '{lp.name}')")
                logger.info("%s -> %s", lp.name, name)
            while len(tops) < layer.num_tops:
                tops.append(f"{AUTO_TOP}{lp.name}#{len(tops)}")
            bottom_shapes = [self.blob_shapes[name] for name in bottoms]
            logger.info("Setting up %s", lp.name)
            layer.setup(bottom_shapes)
            top_shapes = layer.reshape(bottom_shapes)
            if len(top_shapes) < len(tops):
                raise layer.error(f"produced {len(top_shapes)} top shape(s) for {len(tops)} tops")
            weights = self._loss_weights(layer, lp, len(tops))
            for j, (name, shape, weight) in enumerate(zip(tops, top_shapes, weights)):
                self.blob_producer.setdefault(name, (i, j))
                self.blob_shapes[name] = tuple(shape)
                logger.info("Top shape: %s", shape_string(shape))
                if weight:
                    logger.info("    with loss weight %g", weight)
                    self.loss_tops.append((name, weight))
                memory += math.prod(shape)
                if not name.startswith(AUTO_TOP):
                    self._available.add(name)
            logger.info("Memory required for data: %d", memory * 4)
            param_need = self._setup_params(i, layer, lp, param_owner)

            propagate = list(lp.propagate_down)
            if propagate and len(propagate) != len(bottoms):
                raise layer.error(f"propagate_down has {len(propagate)} entries; it needs 0 or "
                                  f"one per bottom ({len(bottoms)})")
            detach = []
            for j, name in enumerate(bottoms):
                wants = blob_needs_backward.get(name, False) or (
                    self.force_backward and layer.allow_force_backward(j))
                if propagate:
                    wants = propagate[j]
                detach.append(not wants)
            # force_backward makes layers run backward and lets allowed bottoms
            # get diffs, but (as in Caffe) does not by itself mark their tops.
            need = any(not d for d in detach) or param_need
            for name in tops:
                blob_needs_backward[name] = need or blob_needs_backward.get(name, False)
            self.layer_need_backward.append(need)
            self.layers.append(layer)
            self.bottom_names.append(bottoms)
            self.top_names.append(tops)
            self.bottom_detach.append(detach)
        self.layer_params = planned
        self._prune_backward()

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

    def _loss_weights(self, layer: Layer, lp: caffe_pb2.LayerParameter, num_tops: int) -> list[float]:
        if not lp.loss_weight and layer.is_loss:
            lp.loss_weight.append(1.0)  # Caffe's LossLayer default, kept in the saved net
        weights = list(lp.loss_weight)
        if weights and len(weights) != num_tops:
            raise layer.error("loss_weight must be unspecified or specified once per top blob.")
        return weights or [0.0] * num_tops

    def _setup_params(self, index: int, layer: Layer, lp: caffe_pb2.LayerParameter,
                      owners: dict[str, tuple[int, int]]) -> bool:
        """Set up sharing and gradients of the layer's blobs; return whether
        any of them is learned (lr_mult != 0), which makes the layer need backward."""
        learned = False
        for p, blob in enumerate(layer.blobs):
            spec = lp.param[p] if p < len(lp.param) else caffe_pb2.ParamSpec()
            learned = learned or (spec.lr_mult != 0 and blob.requires_grad)
            propagate = spec.lr_mult != 0 or self.force_backward
            if spec.name and spec.name in owners:
                self._share_param(layer, lp, p, spec, owners[spec.name], propagate)
                continue
            if spec.name:
                owners[spec.name] = (index, p)
            blob.requires_grad_(propagate)
            self.learnable_params.append(LearnableParam(
                lp.name, p, blob, spec.lr_mult, spec.decay_mult))
            self._explicit_mults[id(blob)] = (spec.HasField("lr_mult"), spec.HasField("decay_mult"))
        return learned

    def _share_param(self, layer: Layer, lp: caffe_pb2.LayerParameter, p: int,
                     spec: caffe_pb2.ParamSpec, owner_at: tuple[int, int], propagate: bool) -> None:
        owner_layer = self.layers[owner_at[0]]
        owner = owner_layer.blobs[owner_at[1]]
        mine = tuple(layer.blobs[p].shape)
        if spec.share_mode == caffe_pb2.ParamSpec.PERMISSIVE:
            ok = owner.numel() == math.prod(mine)
        else:
            ok = tuple(owner.shape) == mine
        if not ok:
            raise CaffeError(
                f"Cannot share param '{spec.name}' owned by layer '{owner_layer.name}' with "
                f"layer '{lp.name}'; {'count' if spec.share_mode else 'shape'} mismatch.  "
                f"Owner layer param shape is {shape_string(owner.shape)}; sharing layer "
                f"expects shape {shape_string(mine)}")
        layer.blobs[p] = owner
        if tuple(owner.shape) != mine:
            layer.blob_views[p] = mine
        if propagate:
            owner.requires_grad_(True)
        learnable = next(lp_ for lp_ in self.learnable_params if lp_.blob is owner)
        has_lr, has_decay = self._explicit_mults[id(owner)]
        # The owner's explicit lr_mult/decay_mult wins; else the first sharer that sets one.
        for field, has in (("lr_mult", has_lr), ("decay_mult", has_decay)):
            if not spec.HasField(field):
                continue
            value = getattr(spec, field)
            if has and getattr(learnable, field) != value:
                raise CaffeError(f"Shared param '{spec.name}' has mismatched {field}.")
            if not has:
                setattr(learnable, field, value)
        self._explicit_mults[id(owner)] = (has_lr or spec.HasField("lr_mult"),
                                            has_decay or spec.HasField("decay_mult"))

    # -- running -------------------------------------------------------
    @property
    def layer_names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    def layer_index(self, name: str) -> int:
        for i, layer in enumerate(self.layers):
            if layer.name == name:
                return i
        raise CaffeError(f"Net '{self.name}' has no layer named '{name}'")

    def forward(self, start: int = 0, end: int | None = None) -> torch.Tensor:
        """Run layers start..end (inclusive) and return the weighted loss of
        the loss tops they produced (Caffe's ForwardFromTo)."""
        end = len(self.layers) - 1 if end is None else end
        values = self._values
        loss = torch.zeros((), device=self._device())
        weights = dict(self.loss_tops)
        for i in range(start, end + 1):
            layer = self.layers[i]
            bottoms = []
            for name, detach in zip(self.bottom_names[i], self.bottom_detach[i]):
                value = values[name]
                bottoms.append(value.detach() if detach and value.requires_grad else value)
            tops = layer(*bottoms)
            for j, (name, top) in enumerate(zip(self.top_names[i], tops)):
                if self.top_detach[i]:
                    top = top.detach()
                elif (not self.bottom_names[i] and self.force_backward and
                      top.is_floating_point() and not top.requires_grad):
                    top = top.detach().requires_grad_()  # inputs get diffs under force_backward
                in_place = j < len(self.bottom_names[i]) and self.bottom_names[i][j] == name
                if self.retain_blob_diffs:
                    if not in_place:
                        self._diff_source[name] = top
                    if top.requires_grad and top.grad_fn is not None:
                        top.retain_grad()
                values[name] = top
                weight = weights.get(name)
                if weight:
                    loss = loss + weight * top.sum()
        return loss

    def _device(self) -> torch.device:
        for blob in self.parameters():
            return blob.device
        for buf in self.buffers():
            return buf.device
        return torch.device("cpu")

    def blob(self, name: str) -> torch.Tensor:
        """The current value of a blob (zeros of its inferred shape before any forward)."""
        value = self._values.get(name)
        if value is None:
            if name not in self.blob_shapes:
                raise CaffeError(f"Net '{self.name}' has no blob named '{name}'")
            layer, top = self.blob_producer[name]
            value = self.layers[layer].persistent_top(top)
            if value is None:
                value = torch.zeros(self.blob_shapes[name], device=self._device())
            self._values[name] = value
        return value

    def reshape_input(self, name: str, shape: Shape) -> None:
        """Give a source layer's top (an Input blob) a new shape, zero-filled."""
        if name not in self.blob_producer:
            raise CaffeError(f"Net '{self.name}' has no blob named '{name}'")
        layer, top = self.blob_producer[name]
        self.layers[layer].reshape_persistent_top(top, shape)
        self._values.pop(name, None)
        self.blob_shapes[name] = shape

    def share_trained_layers_with(self, other: Net) -> None:
        """Point this net's params at `other`'s, by layer name (Caffe's
        ShareTrainedLayersWith, used to give test nets the train weights)."""
        sources = {layer.name: layer for layer in other.layers}
        for layer in self.layers:
            source = sources.get(layer.name)
            if source is None or not len(layer.blobs):
                continue
            if len(source.blobs) != len(layer.blobs):
                raise CaffeError(f"Incompatible number of blobs for layer {layer.name}")
            for j in range(len(layer.blobs)):
                if tuple(source.blobs[j].shape) != tuple(layer.blobs[j].shape):
                    raise CaffeError(
                        f"Cannot share param {j} weights from layer '{layer.name}'; shape "
                        f"mismatch.  Source param shape is {shape_string(source.blobs[j].shape)}"
                        f"; target param shape is {shape_string(layer.blobs[j].shape)}")
                layer.blobs[j] = source.blobs[j]

    def set_blob(self, name: str, value: torch.Tensor) -> None:
        self._values[name] = value

    def blob_diff(self, name: str) -> torch.Tensor | None:
        """The diff of a blob after backward: for an in-place blob, the diff
        with respect to its first producer's output, as in Caffe."""
        source = self._diff_source.get(name, self._values.get(name))
        grad = None if source is None else source.grad
        # An output no gradient flows through (a pooling mask, an ArgMax)
        # keeps the diff seeded on it, as Caffe's blob does.
        return self._seeds.get(name) if grad is None else grad

    def backward(self, top_diffs: dict[str, torch.Tensor] | None = None) -> None:
        """Backpropagate from every loss top (seeded with its loss weight, as
        Caffe seeds it) and from the diffs given for output blobs; a diff
        given for a loss top replaces its loss-weight seed."""
        given = dict(top_diffs or {})
        tensors: list[torch.Tensor] = []
        grads: list[torch.Tensor] = []
        for name, weight in self.loss_tops:
            value = self._values.get(name)
            if name not in given and value is not None and value.requires_grad:
                tensors.append(value)
                grads.append(torch.full_like(value, weight))
        self._seeds = {}
        for name, diff in given.items():
            value = self._values[name]
            seed = torch.as_tensor(diff, dtype=value.dtype, device=value.device).reshape(value.shape)
            self._seeds[name] = seed
            if value.requires_grad:
                tensors.append(value)
                grads.append(seed)
        if tensors:
            torch.autograd.backward(tensors, grads)

    def output_blobs(self) -> dict[str, torch.Tensor]:
        return {name: self._values[name] for name in self.output_names if name in self._values}

    def reshape_all(self) -> None:
        """Re-infer every blob shape from the current input shapes (Caffe's Net::Reshape)."""
        for i, layer in enumerate(self.layers):
            bottom_shapes = [self.blob_shapes[n] for n in self.bottom_names[i]]
            for name, shape in zip(self.top_names[i], layer.reshape(bottom_shapes)):
                self.blob_shapes[name] = tuple(shape)
                value = self._values.get(name)
                if value is not None and tuple(value.shape) != tuple(shape) and \
                        self.bottom_names[i]:
                    self._values.pop(name)

    def params_of(self, layer_name: str) -> Sequence[nn.Parameter]:
        return list(self.layers[self.layer_index(layer_name)].blobs)
