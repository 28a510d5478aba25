"""The net: a filtered, split-inserted NetParameter built into torch modules
(construction: caffe_ft.net.wiring, Caffe's Net::Init).

Running: Net::ForwardFromTo and Net::BackwardFromTo on top of autograd, and
the public blob store (data and diff of every blob and param, in torch and,
through caffe_ft.net.store, as host arrays) that pycaffe, the solver and the
tools use. Two backward modes:

- whole-graph (`caffe_ft train`'s solver): one autograd pass from the
  losses into the params; blob diffs are not kept;
- layer by layer (`keep_blob_diffs`, pycaffe's, its Solver's included, and
  `time`'s): forward cuts the graph at every layer, and backward runs the
  layers in reverse one at a time, as Caffe does, so every blob keeps its
  diff, a layer range can run alone and each layer's backward can be timed.

A net that keeps blob diffs runs a whole pass as one graph when its caller
asks (`graph_diffs`: the pycaffe Solver's own iterations, with no per-layer
callback): each blob's first producer keeps its gradient (retain_grad),
which is the diff Caffe's layer-by-layer backward leaves in the blob, for
one autograd pass instead of one per layer (a GPU step at small batch
waits on that host work).
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from typing import ContextManager

import numpy as np
import torch
from torch import nn

from caffe_ft.blobs import shape_string
from caffe_ft.errors import CaffeError
from caffe_ft.layers.base import Layer, Shape
from caffe_ft.layers.families import check_supported
from caffe_ft.glog import logger
from caffe_ft.net.filter import filter_net
from caffe_ft.net.fusion import FusionPlan
from caffe_ft.net.params import LearnableParam
from caffe_ft.net.splits import insert_splits
from caffe_ft.net.store import Mirror, Mirrors
from caffe_ft.net.wiring import AUTO_TOP, Wiring
from caffe_ft.proto import caffe_pb2

# Called around each layer's forward or backward ("forward"/"backward"), e.g. to time it.
LayerHook = Callable[[int, str], ContextManager[None]]

__all__ = ["LayerHook", "LearnableParam", "Net"]


def _no_hook(index: int, direction: str) -> ContextManager[None]:
    return contextlib.nullcontext()


class Net(nn.Module):
    def __init__(self, param: caffe_pb2.NetParameter, phase: int | None = None, level: int = 0,
                 stages: Iterable[str] = (), source: str = "<net>") -> None:
        super().__init__()
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

        wiring = Wiring(planned, self.phase, self.force_backward, source)
        self.layers = nn.ModuleList(wiring.layers)
        # The same layers in a plain list: a pass indexes it ~200 times, and
        # ModuleList indexing costs more than a layer's own Python (a GPU step
        # at small batch waits on exactly this host time).
        self._layer_list: list[Layer] = list(wiring.layers)
        self.bottom_names = wiring.bottom_names
        self.top_names = wiring.top_names
        self.bottom_detach = wiring.bottom_detach
        self.top_detach = wiring.top_detach
        self.layer_need_backward = wiring.layer_need_backward
        self.loss_tops = wiring.loss_tops
        self.loss_weight = dict(self.loss_tops)  # top name → its loss weight
        self.blob_shapes = wiring.blob_shapes
        self.blob_producer = wiring.blob_producer
        self._params = wiring.params
        self.layer_params = planned
        # In-place chains (BatchNorm → Scale → ReLU) that may run as one step.
        self.fusion = FusionPlan(self.layers, self.bottom_names, self.top_names,
                                 self.bottom_detach, self.top_detach, self.loss_tops)
        # Per layer, what a pass would otherwise work out again each time:
        # whether a bottom is cut from backward, whether a top needs
        # _top_of, and (top position, loss weight) of its weighted tops.
        self._cuts_bottom = [any(cuts) for cuts in self.bottom_detach]
        self._plain_tops = [not (self.top_detach[i] or (self.force_backward and not bottoms))
                            for i, bottoms in enumerate(self.bottom_names)]
        self._loss_terms = [tuple((k, self.loss_weight[name]) for k, name in enumerate(tops)
                                  if self.loss_weight.get(name)) for tops in self.top_names]
        # Blobs some layer reads: those a layer-by-layer backward leaves a diff in.
        self._read_blobs = {name for bottoms in self.bottom_names for name in bottoms}
        self.output_names = sorted(wiring.available)
        for name in self.output_names:
            logger.info("This network produces output %s", name)
        logger.info("Network initialization done.")
        self.keep_blob_diffs = False
        # Called around each layer's forward and backward in every pass that
        # names no hook of its own (pycaffe's per-layer callbacks, which
        # Caffe's Net runs in its solver's passes too).
        self.layer_hook: LayerHook = _no_hook
        self._values: dict[str, torch.Tensor] = {}
        self._diffs: dict[str, torch.Tensor] = {}
        # Layer by layer: each layer's detached bottoms and its tops, for its own backward.
        self._layer_io: dict[int, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
        # After a graph_diffs forward: each read blob's first producer output,
        # whose gradient the backward keeps (None: the last forward cut the graph).
        self._retained: dict[str, torch.Tensor] | None = None
        self.mirrors = Mirrors()

    @property
    def learnable_params(self) -> list[LearnableParam]:
        return self._params.learnable

    # -- layers ---------------------------------------------------------
    @property
    def layer_names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    def layer_index(self, name: str) -> int:
        for i, layer in enumerate(self.layers):
            if layer.name == name:
                return i
        raise CaffeError(f"Net '{self.name}' has no layer named '{name}'")

    def params_of(self, layer_name: str) -> Sequence[nn.Parameter]:
        return list(self.layers[self.layer_index(layer_name)].blobs)

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

    # -- the blob store -------------------------------------------------
    @property
    def blob_names(self) -> list[str]:
        """Every named blob, in Caffe's order (first appearance as a top)."""
        return list(dict.fromkeys(name for tops in self.top_names for name in tops
                                  if not name.startswith(AUTO_TOP)))

    def _check_blob(self, name: str) -> None:
        if name not in self.blob_shapes:
            raise CaffeError(f"Net '{self.name}' has no blob named '{name}'")

    def _persistent_top(self, name: str) -> torch.Tensor | None:
        """The tensor a source layer (Input, DummyData) returns for this blob on
        every forward, if no later layer writes the blob in place."""
        layer, top = self.blob_producer[name]
        for i in range(layer + 1, len(self.layers)):
            if name in self.top_names[i]:
                return None
        return self.layers[layer].persistent_top(top)

    def blob_data(self, name: str) -> torch.Tensor:
        """The blob's current value (zeros of its inferred shape before any forward)."""
        value = self._values.get(name)
        if value is None:
            self._check_blob(name)
            value = self._persistent_top(name)
            if value is None:
                value = torch.zeros(self.blob_shapes[name], device=self.device)
            self._values[name] = value
        return value

    def set_blob_data(self, name: str, value: torch.Tensor | np.ndarray) -> None:
        """Write the blob's values: into the source layer's own tensor for an
        input blob, else as the value later layers read."""
        current = self.blob_data(name)
        value = torch.as_tensor(value)
        if tuple(value.shape) != tuple(current.shape):
            raise CaffeError(f"Blob '{name}' has shape {list(current.shape)}; the value given "
                             f"has shape {list(value.shape)} (reshape the blob first)")
        persistent = self._persistent_top(name)
        if persistent is not None:
            with torch.no_grad():
                persistent.copy_(value)
        else:
            self._values[name] = value.detach().to(current.device, current.dtype)

    def blob_diff(self, name: str) -> torch.Tensor | None:
        """The blob's diff after a layer-by-layer backward (None where nothing
        was computed or given); an in-place blob's is the diff with respect to
        its first producer's output, as in Caffe."""
        self._check_blob(name)
        return self._diffs.get(name)

    def set_blob_diff(self, name: str, value: torch.Tensor | np.ndarray) -> None:
        """Give the blob a diff: for an output, what backward starts from (a
        loss top's replaces its loss-weight seed)."""
        shape = self.blob_data(name).shape
        self._diffs[name] = torch.as_tensor(value, dtype=torch.float32).reshape(shape).to(
            self.device)

    def outputs(self) -> dict[str, torch.Tensor]:
        """The output blobs (used by no layer) that the last forward produced."""
        return {name: self._values[name] for name in self.output_names if name in self._values}

    def host_blob(self, name: str, diff: bool = False) -> np.ndarray:
        """The blob's data or diff as a persistent host array (pycaffe's
        Blob.data / .diff): see caffe_ft.net.store."""
        self._check_blob(name)
        if diff:
            mirror = self.mirrors.get(("diff", name), lambda: Mirror(
                lambda: self._diffs.get(name), lambda t: self.set_blob_diff(name, t),
                lambda: tuple(self.blob_data(name).shape), persistent=False))
        else:
            mirror = self.mirrors.get(("data", name), lambda: Mirror(
                lambda: self.blob_data(name), lambda t: self.set_blob_data(name, t),
                lambda: tuple(self.blob_data(name).shape),
                persistent=self._persistent_top(name) is not None))
        return mirror.host()

    def host_param(self, layer_index: int, index: int, diff: bool = False) -> np.ndarray:
        """A param blob's data or diff (in its layer's shape) as a persistent host array."""
        layer = self.layers[layer_index]

        def shape() -> Shape:
            return tuple(layer.blob(index).shape)

        def read() -> torch.Tensor | None:
            if not diff:
                return layer.blob(index)
            grad = layer.blobs[index].grad
            return None if grad is None else grad.view(shape())

        def write(value: torch.Tensor) -> None:
            param = layer.blobs[index]
            value = value.reshape(param.shape)
            if diff:
                param.grad = value.to(param.dtype)
            else:
                with torch.no_grad():
                    param.copy_(value)

        key = ("param", layer_index, index, diff)
        return self.mirrors.get(key, lambda: Mirror(read, write, shape,
                                                    persistent=not diff)).host()

    def reshape_input(self, name: str, shape: Shape) -> None:
        """Give a source layer's top (an Input blob) a new shape, zero-filled."""
        self._check_blob(name)
        layer, top = self.blob_producer[name]
        self.layers[layer].reshape_persistent_top(top, shape)
        self._values.pop(name, None)
        self.blob_shapes[name] = shape

    def reshape(self) -> None:
        """Re-infer every blob shape from the current input shapes (Caffe's Net::Reshape)."""
        for i, layer in enumerate(self.layers):
            bottom_shapes = [self.blob_shapes[n] for n in self.bottom_names[i]]
            for name, shape in zip(self.top_names[i], layer.reshape(bottom_shapes)):
                self.blob_shapes[name] = tuple(shape)
                value = self._values.get(name)
                if value is not None and tuple(value.shape) != tuple(shape) and \
                        self.bottom_names[i]:
                    self._values.pop(name)

    @property
    def device(self) -> torch.device:
        for blob in self.parameters():
            return blob.device
        for buf in self.buffers():
            return buf.device
        return torch.device("cpu")

    # -- passes ---------------------------------------------------------
    def forward(self, start: int = 0, end: int | None = None,
                feed: dict[str, torch.Tensor] | None = None,
                hook: LayerHook | None = None, graph_diffs: bool = False) -> torch.Tensor:
        """Run layers start..end (inclusive) and return the weighted loss of
        the loss tops they produced (Caffe's ForwardFromTo). `feed` gives
        blobs values to use as they are (a layer whose tops are all fed does
        not run), as a traced export feeds its graph inputs. `hook` (default:
        layer_hook) runs around each layer. `graph_diffs`: a net keeping blob
        diffs runs a whole pass, with no hook, as one graph (module doc)."""
        self.mirrors.push()
        hook = self.layer_hook if hook is None else hook
        layers, top_names = self._layer_list, self.top_names
        end = len(layers) - 1 if end is None else end
        values = self._values
        if feed:
            values.update(feed)
        loss: torch.Tensor | None = None
        # A chain runs as one step only where nothing looks inside it.
        fuse = not (feed or self.keep_blob_diffs or hook is not _no_hook)
        retained: dict[str, torch.Tensor] | None = None
        if (graph_diffs and self.keep_blob_diffs and hook is _no_hook and not feed and
                start == 0 and end == len(layers) - 1 and torch.is_grad_enabled()):
            retained = {}
            self._layer_io.clear()  # a later range backward replays this pass's layers
        # Locals: this loop is the host's work per layer.
        bottoms_of, plain_tops, loss_terms = self._bottoms_of, self._plain_tops, self._loss_terms
        keep = self.keep_blob_diffs and retained is None
        read_blobs = self._read_blobs
        for i, last in self.fusion.steps(start, end, fuse):
            if feed and all(name in feed for name in top_names[i]):
                continue
            bottoms = bottoms_of(i, keep)
            if hook is _no_hook:
                tops = (layers[i](*bottoms) if last == i else
                        layers[i].forward_chain(bottoms[0], layers[i + 1:last + 1]))
            else:
                with hook(i, "forward"):
                    tops = layers[i](*bottoms)  # hooks see every layer: no chains
            if not plain_tops[last]:
                tops = [self._top_of(last, top) for top in tops]
            if keep:
                self._layer_io[i] = (bottoms, tops)
            for name, top in zip(top_names[last], tops):
                values[name] = top
                if retained is not None and top.requires_grad and name in read_blobs and \
                        name not in retained:
                    top.retain_grad()
                    retained[name] = top
            for k, weight in loss_terms[last]:
                term = weight * tops[k].sum()  # float32 even from an autocast top
                loss = term.float() if loss is None else loss + term
        self._retained = retained
        self.mirrors.pull()
        return torch.zeros((), device=self.device) if loss is None else loss

    def _bottoms_of(self, index: int, leaves: bool) -> list[torch.Tensor]:
        """The layer's bottoms; `leaves`: each its own leaf, cut from the
        graph, for a layer-by-layer backward."""
        values = self._values
        if not (leaves or self._cuts_bottom[index]):
            try:
                return [values[name] for name in self.bottom_names[index]]
            except KeyError:
                pass  # a blob no layer has written yet: blob_data makes it
        bottoms = []
        for name, detach in zip(self.bottom_names[index], self.bottom_detach[index]):
            value = self.blob_data(name)
            if leaves:
                # The layer's own leaf, so its backward can run by itself; the
                # plan (not the value's history: a replay may read a blob no
                # forward wrote) says whether a diff flows into it.
                leaf = value.detach()
                if not detach and leaf.is_floating_point():
                    leaf.requires_grad_()
                value = leaf
            elif detach and value.requires_grad:
                value = value.detach()
            bottoms.append(value)
        return bottoms

    def _top_of(self, index: int, top: torch.Tensor) -> torch.Tensor:
        if self.top_detach[index]:
            return top.detach()
        if (not self.bottom_names[index] and self.force_backward and
                top.is_floating_point() and not top.requires_grad):
            return top.detach().requires_grad_()  # inputs get diffs under force_backward
        return top

    def backward(self, diffs: dict[str, torch.Tensor | np.ndarray] | None = None,
                 start: int | None = None, end: int | None = None,
                 hook: LayerHook | None = None) -> None:
        """Caffe's BackwardFromTo(start, end), start ≥ end (default: the last
        layer down to the first), after giving blobs the `diffs` (as
        set_blob_diff). Every loss top is seeded with its diff (by default its
        loss weight, as Caffe sets it) and every output blob with the diff
        given to it. Param diffs accumulate until cleared."""
        self.mirrors.push()
        hook = self.layer_hook if hook is None else hook
        for name, diff in (diffs or {}).items():
            self.set_blob_diff(name, diff)
        whole = start in (None, len(self.layers) - 1) and end in (None, 0) and \
            hook is _no_hook
        if self._retained is not None and whole:
            # A graph_diffs forward: one pass, then every read blob's diff is
            # its first producer's gradient, as a layer-by-layer backward
            # leaves it (a blob the gradient never reached keeps its diff).
            retained, self._retained = self._retained, None  # a second backward replays
            self._backward_whole()
            self._diffs.update((name, top.grad) for name, top in retained.items()
                               if top.grad is not None)
        elif self.keep_blob_diffs:
            self._backward_layers(len(self.layers) - 1 if start is None else start,
                                  0 if end is None else end, hook)
        elif not whole:
            raise CaffeError("A backward over a layer range, or timed per layer, needs the "
                             "net to keep blob diffs (keep_blob_diffs) from its forward on")
        else:
            self._backward_whole()
        self.mirrors.pull()

    def _backward_whole(self) -> None:
        """One autograd pass from the seeded tops into the params."""
        tensors, grads = self._seeds(self.output_names + list(self.loss_weight))
        if tensors:
            torch.autograd.backward(tensors, grads)

    def _seeds(self, names: Iterable[str]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The tops the whole-graph backward starts from, with their diffs."""
        tensors, grads = [], []
        for name in dict.fromkeys(names):
            value = self._values.get(name)
            if value is None or not value.requires_grad:
                continue
            diff = self._seed(name, value)
            if diff is not None:
                tensors.append(value)
                grads.append(diff)
        return tensors, grads

    def _seed(self, name: str, top: torch.Tensor) -> torch.Tensor | None:
        """A top's diff as backward reads it: the one given, else a loss top's
        loss weight (as Caffe seeds it), else none."""
        diff = self._diffs.get(name)
        if diff is None and self.loss_weight.get(name):
            diff = torch.full_like(top, self.loss_weight[name])
        return diff

    def _backward_layers(self, start: int, end: int, hook: LayerHook) -> None:
        for i in range(start, end - 1, -1):
            # As Caffe's BackwardFromTo, callbacks run around every layer in
            # the range, whether or not it computes anything.
            with hook(i, "backward"):
                if self.layer_need_backward[i]:
                    self._backward_layer(i)

    def _backward_layer(self, i: int) -> None:
        bottoms, tops = self._layer_io.get(i) or self._replay(i)
        outs, grads = [], []
        for name, top in zip(self.top_names[i], tops):
            if not top.requires_grad:
                continue
            diff = self._seed(name, top)
            outs.append(top)
            grads.append(diff if diff is not None else torch.zeros_like(top))
        wanted = [j for j, b in enumerate(bottoms) if b.requires_grad]
        params = [p for p in self.layers[i].blobs if p.requires_grad]
        if not outs or not (wanted or params):
            return
        computed = torch.autograd.grad(outs, [bottoms[j] for j in wanted] + params,
                                       grads, retain_graph=True, allow_unused=True)
        for j, grad in zip(wanted, computed):
            # A bottom the layer's gradient never reaches keeps its diff, as
            # a Caffe layer that does not write it leaves it.
            if grad is not None:
                self._diffs[self.bottom_names[i][j]] = grad
        for param, grad in zip(params, computed[len(wanted):]):
            if grad is None:
                continue
            if param.grad is None:
                param.grad = grad.clone()
            else:
                param.grad.add_(grad)

    def _replay(self, index: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """A layer's graph for a backward that no forward of it preceded
        (Caffe's backward then reads the blobs as they are): its forward on
        the current bottoms, without writing its tops."""
        bottoms = self._bottoms_of(index, True)
        with torch.enable_grad():
            tops = [self._top_of(index, top) for top in self.layers[index](*bottoms)]
        self._layer_io[index] = (bottoms, tops)
        return bottoms, tops

    def clear_param_diffs(self) -> None:
        """Caffe's ClearParamDiffs: every learnable param's diff to zero."""
        for entry in self.learnable_params:
            entry.blob.grad = None
        self.mirrors.pull()
