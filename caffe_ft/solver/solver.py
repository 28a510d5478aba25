"""Caffe's Solver: Step, Solve, Test, Snapshot and Restore, with the numbers
and log lines of BVLC Caffe's solver.cpp and sgd_solver.cpp.

One iteration (Step): clear diffs; test if due; iter_size forward/backward
passes accumulate diffs; smoothed loss and display; ApplyUpdate (rate →
clip → per param: normalize, regularize, update rule → data -= diff →
iter += 1); snapshot if due or requested by a signal. Scalars Caffe keeps
as float (losses, test sums, smoothed loss) are float32 here too, so the
logged numbers are Caffe's to the printed digit.
"""
from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable

import numpy as np
import torch
from google.protobuf import text_format

from caffe_ft.errors import CaffeError
from caffe_ft.glog import logger
from caffe_ft.net import Net
from caffe_ft.net.weights import copy_trained_layers_from, save_caffemodel
from caffe_ft.proto import caffe_pb2
from caffe_ft.solver.display_loss import DisplayLoss
from caffe_ft.solver.divergence import DivergenceWatch
from caffe_ft.solver.lr_policy import check_policy, learning_rate
from caffe_ft.parity import using_flags
from caffe_ft.solver.nets import build_test_nets, build_train_net, resolve_path
from caffe_ft.solver.precision import LossScaler, Precision
from caffe_ft.solver.progress import TrainingProgress
from caffe_ft.solver.scores import Scores, loss_suffix, output_values
from caffe_ft.solver.regularize import (
    check_regularization,
    clip_gradients,
    normalize,
    regularize,
)
from caffe_ft.solver.signals import ActionRequest, SolverAction
from caffe_ft.solver.snapshot_files import SnapshotFiles
from caffe_ft.solver.state import SolverState, read_state, resolve_learned_net, write_state
from caffe_ft.solver.update_rules import Hyper, rule_for
from caffe_ft.upgrade import solver_needs_type_upgrade, upgrade_solver_type

f32 = np.float32
HDF5 = caffe_pb2.SolverParameter.HDF5


_PROGRESS_SECONDS = 0.2


def _no_request() -> SolverAction:
    return SolverAction.NONE


class Solver:
    """Trains the net a SolverParameter describes. `solver_path` lets net
    files and the snapshot prefix be found beside the solver file;
    `solver_type` names the update rule when it is not `param.type`."""

    def __init__(self, param: caffe_pb2.SolverParameter, solver_path: str = "",
                 device: torch.device | None = None,
                 action_request: ActionRequest = _no_request, rank: int = 0,
                 solver_type: str = "", precision: str = "fp32", compile: bool = False
                 ) -> None:
        logger.info("Initializing solver from parameters: \n%s",
                    text_format.MessageToString(param).rstrip("\n"))
        self.param = caffe_pb2.SolverParameter()
        self.param.CopyFrom(param)
        param = self.param
        if solver_needs_type_upgrade(param):
            upgrade_solver_type(param, solver_path or "<solver>")
        if param.average_loss < 1:
            raise CaffeError("average_loss should be non-negative.")
        check_policy(param)
        check_regularization(param.regularization_type)
        self.rule = rule_for(param, solver_type)
        self.hyper = Hyper.from_param(param)
        self.solver_dir = os.path.dirname(solver_path)
        self.device = device or torch.device("cpu")
        self.action_request = action_request
        self.rank = rank
        self._check_snapshot_prefix()
        if param.random_seed >= 0:
            torch.manual_seed(param.random_seed + rank)
        self.precision = Precision(precision, self.device.type)
        with using_flags(self.precision.flags()):
            self.net = build_train_net(param, self.solver_dir).to(self.device)
        if self.precision.fast_cuda:
            self.net.to(memory_format=torch.channels_last)
        # fp16 scales the loss so small diffs survive; the others need not.
        self._scaler = LossScaler() if self.precision.name == "fp16" else None
        # A net keeping blob diffs (pycaffe's) still runs the solver's own
        # passes as one graph when no per-layer callback looks inside.
        self._forward = self._compiled_forward() if compile else \
            functools.partial(self.net.forward, graph_diffs=True)
        self.test_nets = [net.to(self.device) for net in
                          build_test_nets(param, self.solver_dir)] if rank == 0 else []
        logger.info("Solver scaffolding done.")
        self.iter = 0
        self.current_step = 0
        self.requested_early_exit = False
        # Warns at the first non-finite loss; with `stop` set (train
        # -stop_on_nan) the run ends there.
        self.divergence = DivergenceWatch()
        self.params = self.net.learnable_params
        # Caffe's history_: one set of blobs per learnable param, and a second
        # set after the first for AdaDelta and Adam.
        self.history = [[torch.zeros_like(p.blob) for p in self.params]
                        for _ in range(self.rule.history_sets)]
        self._local_decay = [float(f32(param.weight_decay) * f32(p.decay_mult))
                             for p in self.params]
        self._skippable: set[int] = set()
        self._groups: tuple[tuple[bool, ...], dict[tuple[float, float], list[int]]] | None = None
        self._find_frozen_params()
        self.display_loss = DisplayLoss(param.average_loss, self.divergence,
                                        lazy=self.device.type != "cpu")
        self._progress_due = 0.0
        self._iterations_last = 0
        # Called at the start of each iteration, after its test and before its
        # forward/backward (Caffe's Solver::Callback::on_start).
        self.start_hooks: list[Callable[[Solver], None]] = []
        # Called on the accumulated diffs before the update (data-parallel
        # training averages them across processes here).
        self.gradient_hooks: list[Callable[[Solver], None]] = []
        # When set (data-parallel training), the action every rank takes
        # after an update, in place of this process's own request.
        self.action_sync: ActionRequest | None = None
        # The terminal's live training line, while solve() runs.
        self.progress: TrainingProgress | None = None

    # -- snapshot files -------------------------------------------------
    def _check_snapshot_prefix(self) -> None:
        """Caffe's CheckSnapshotWritePermissions: probe-write a file with the
        prefix so a bad folder fails now, not at the first snapshot."""
        param = self.param
        folder = os.path.dirname(param.snapshot_prefix)
        if folder and not os.path.isdir(folder):
            # Like net files, a prefix whose folder exists only beside the solver goes there.
            beside = resolve_path(folder, self.solver_dir)
            if beside != folder:
                param.snapshot_prefix = os.path.join(beside, os.path.basename(
                    param.snapshot_prefix))
        if not param.snapshot:
            return
        if not param.snapshot_prefix:
            raise CaffeError("In solver params, snapshot is specified but snapshot_prefix is not")
        probe = self._snapshot_filename(".tempfile", 0)
        try:
            with open(probe, "w"):
                pass
            os.remove(probe)
        except OSError:
            raise CaffeError(f"Cannot write to snapshot prefix '{param.snapshot_prefix}'.  Make "
                             f"sure that the directory exists and is writable.") from None

    def _snapshot_filename(self, extension: str, iteration: int | None = None) -> str:
        return (f"{self.param.snapshot_prefix}_iter_"
                f"{self.iter if iteration is None else iteration}{extension}")

    def snapshot(self) -> None:
        """Write the model and its solver state as a pair: both or neither."""
        write_diff = self.param.snapshot_diff
        with SnapshotFiles(self.iter) as files:
            if self.param.snapshot_format == HDF5:
                from caffe_ft.net.hdf5_weights import save_hdf5_weights
                model = self._snapshot_filename(".caffemodel.h5")
                logger.info("Snapshotting to HDF5 file %s", model)
                save_hdf5_weights(self.net, files.temp(model), write_diff)
                state_file = self._snapshot_filename(".solverstate.h5")
                logger.info("Snapshotting solver state to HDF5 file %s", state_file)
            else:
                model = self._snapshot_filename(".caffemodel")
                logger.info("Snapshotting to binary proto file %s", model)
                save_caffemodel(self.net, files.temp(model), write_diff)
                state_file = self._snapshot_filename(".solverstate")
                logger.info("Snapshotting solver state to binary proto file %s", state_file)
            history = [blob.detach().cpu().numpy() for blobs in self.history for blob in blobs]
            write_state(files.temp(state_file),
                        SolverState(self.iter, model, self.current_step, history))

    def restore(self, state_file: str) -> None:
        """Continue from a snapshot (ours or Caffe's): iteration, weights from
        its learned_net, current_step and history. Data cursors, random state
        and the smoothed loss start afresh, as in Caffe."""
        state = read_state(state_file)
        self.iter = state.iter
        if state.learned_net:
            copy_trained_layers_from(self.net, resolve_learned_net(state_file, state.learned_net))
        self.current_step = state.current_step
        blobs = [blob for blobs in self.history for blob in blobs]
        if len(state.history) != len(blobs):
            raise CaffeError(f"{state_file}: Incorrect length of history blobs: the file has "
                             f"{len(state.history)}, a {self.param.type} solver for this net "
                             f"needs {len(blobs)}.")
        logger.info("SGDSolver: restoring history")
        params = self.params * self.rule.history_sets
        for i, (blob, saved, owner) in enumerate(zip(blobs, state.history, params)):
            if saved.size != blob.numel():
                raise CaffeError(f"{state_file}: history blob {i} ({owner.display_name}) has "
                                 f"{saved.size} values, the param has {blob.numel()}")
            blob.copy_(torch.from_numpy(saved.reshape(tuple(blob.shape))))
        self._find_frozen_params()

    # -- training ---------------------------------------------------------
    def solve(self, resume_file: str | None = None) -> None:
        param = self.param
        logger.info("Solving %s", self.net.name)
        logger.info("Learning Rate Policy: %s", param.lr_policy)
        logger.info("Precision: %s", self.precision.describe())
        self.requested_early_exit = False
        if resume_file:
            logger.info("Restoring previous solver status from %s", resume_file)
            self.restore(resume_file)
        start_iter = self.iter
        with TrainingProgress(self.iter, param.max_iter) as self.progress:
            self.step(param.max_iter - self.iter)
        self.progress = None
        self.display_loss.read()  # losses a GPU left pending: a non-finite one is reported
        if param.snapshot_after_train and (not param.snapshot or self.iter % param.snapshot):
            self.snapshot()
        if self.requested_early_exit:
            logger.info("Optimization stopped early.")
            return
        # One more forward, only to display the loss of the final weights.
        if param.display and self.iter % param.display == 0:
            with torch.no_grad(), using_flags(self.precision.flags()), self.precision.autocast():
                loss = f32(self.net.forward().item())
            self.display_loss.update(loss, self.iter - start_iter)
            logger.info("Iteration %d, loss = %g", self.iter, self.display_loss.value)
        if param.test_interval and self.iter % param.test_interval == 0:
            self.test_all()
        logger.info("Optimization Done.")

    def step(self, iters: int) -> None:
        with using_flags(self.precision.flags()):
            self._step(iters)

    def _step(self, iters: int) -> None:
        param = self.param
        start_iter = self.iter
        stop_iter = self.iter + iters
        self.display_loss.start_step()
        timer = time.perf_counter()
        self._iterations_last = self.iter
        while self.iter < stop_iter:
            self.net.clear_param_diffs()
            if param.test_interval and self.iter % param.test_interval == 0 and \
                    (self.iter > 0 or param.test_initialization):
                self.test_all()
                if self.requested_early_exit:
                    break
            for hook in self.start_hooks:
                hook(self)
            display = bool(param.display) and self.iter % param.display == 0
            # Caffe's float loss sum; float32 device adds round as the host's do.
            loss = self._forward_backward()
            for _ in range(param.iter_size - 1):
                loss = loss + self._forward_backward()
            if param.iter_size != 1:
                loss = loss / f32(param.iter_size)
            self.display_loss.add(self.iter - start_iter, self.iter, loss)
            # -stop_on_nan reads every loss, to stop before a non-finite one updates.
            if (display or self.divergence.stop or self.display_loss.due) and \
                    self.display_loss.read():
                self.requested_early_exit = True
            if self.requested_early_exit:
                break  # -stop_on_nan: this iteration's loss is not finite
            if display:
                # Caffe's CPU timer counts whole milliseconds.
                lapse = f32(int((time.perf_counter() - timer) * 1000) / 1000)
                per_s = f32(self.iter - self._iterations_last) / (lapse if lapse else f32(1))
                logger.info("Iteration %d (%g iter/s, %gs/%d iters), loss = %g", self.iter,
                            per_s, lapse, param.display, self.display_loss.value)
                timer = time.perf_counter()
                self._iterations_last = self.iter
                self._log_outputs(self.net, "Train")
            for hook in self.gradient_hooks:
                hook(self)
            self.apply_update()
            request = self.action_request() if self.action_sync is None else self.action_sync()
            if self.rank == 0 and ((param.snapshot and self.iter % param.snapshot == 0) or
                                   request == SolverAction.SNAPSHOT):
                self.snapshot()
            if request == SolverAction.STOP:
                self.requested_early_exit = True
                break
            self._show_progress()
        self.display_loss.end_step()

    def _forward_backward(self) -> torch.Tensor:
        with self.precision.autocast():
            loss = self._forward()
        if self._scaler is None:
            self.net.backward()
        else:
            self.net.backward({name: weight * self._scaler.scale
                               for name, weight in self.net.loss_tops})
        return loss.detach().to(torch.float32)

    def _compiled_forward(self) -> Callable[[], torch.Tensor]:
        """The train net's forward captured by torch.compile (opt-in; for a
        net whose shapes do not change between iterations)."""
        if not hasattr(torch, "compile"):
            raise CaffeError("-compile needs torch.compile (torch 2.0 or later)")
        return torch.compile(self.net.forward, dynamic=False)

    def _show_progress(self) -> None:
        """Redraw the terminal's progress line, reading the losses (a wait for
        the device) only as often as the line redraws."""
        if self.progress is None or not self.progress.line.enabled:
            return
        now = time.monotonic()
        if now < self._progress_due and self.iter < self.progress.max_iter:
            return
        self._progress_due = now + _PROGRESS_SECONDS
        self.progress.update(self.iter, float(self.display_loss.value))

    def _log_outputs(self, net: Net, kind: str) -> None:
        for index, (name, value) in enumerate(output_values(net)):
            logger.info("    %s net output #%d: %s = %g%s", kind, index, name, value,
                        loss_suffix(net.loss_weight.get(name, 0.0), value))

    def apply_update(self) -> None:
        param = self.param
        # Host writes to params or their diffs (pycaffe) count from here on.
        self.net.mirrors.push()
        rate, step = learning_rate(param, self.iter, self.current_step)
        if param.lr_policy == "multistep" and step != self.current_step:
            logger.info("MultiStep Status: Iteration %d, step = %d", self.iter, step)
        self.current_step = step
        if param.display and self.iter % param.display == 0:
            logger.info("Iteration %d, lr = %g", self.iter, rate)
        # A param Caffe computes no diff for (lr_mult 0) has diff 0; None here.
        grads = [p.blob.grad for p in self.params]
        if self._scaler is not None and not self._scaler.unscale(
                [g for g in grads if g is not None]):
            logger.info("Iteration %d: fp16 diffs overflowed; skipping the update, loss "
                        "scale now %g", self.iter, self._scaler.scale)
            self.net.mirrors.pull()
            self.iter += 1
            return
        clipped = clip_gradients(grads, param.clip_gradients)
        if clipped:
            logger.info("Gradient clipping: scaling down gradients (L2 norm %g > %g) by scale "
                        "factor %g", clipped[0], param.clip_gradients, clipped[1])
        with torch.no_grad():
            for (lr_mult, local_decay), members in self._update_groups(grads).items():
                self._update_group(members, grads, float(f32(rate) * f32(lr_mult)), local_decay)
        self.net.mirrors.pull()
        self.iter += 1

    def _find_frozen_params(self) -> None:
        """The params the update may skip: lr_mult 0 with a zero history,
        which Caffe's rule at rate 0 leaves at zero (SGD, Nesterov: h = m·0 +
        0·g, for any finite diff; the adaptive rules only when no decay and no
        diff feed their history). Found at start and after a restore, not per
        iteration; the update groups are then formed afresh."""
        frozen = set()
        for i, p in enumerate(self.params):
            if p.lr_mult != 0 or self.param.snapshot_diff:
                continue  # snapshot_diff saves the update (0) as the diff: keep the path
            if not self.rule.rate_scales_history and self._local_decay[i]:
                continue
            if all(not bool(blobs[i].any()) for blobs in self.history):
                frozen.add(i)
        self._skippable = frozen
        self._groups = None

    def _update_groups(self, grads: list[torch.Tensor | None]
                       ) -> dict[tuple[float, float], list[int]]:
        """Learnable params by (lr_mult, local decay), one multi-tensor update
        each. A frozen param joins only when an adaptive rule would fold a
        diff (written by force_backward or from Python) into its history.
        Kept while that question has the same answers: every update asks."""
        joins = () if self.rule.rate_scales_history else \
            tuple(grads[i] is not None for i in self._skippable)
        if self._groups is None or self._groups[0] != joins:
            groups: dict[tuple[float, float], list[int]] = {}
            for i, p in enumerate(self.params):
                if i in self._skippable and (self.rule.rate_scales_history or grads[i] is None):
                    continue
                groups.setdefault((p.lr_mult, self._local_decay[i]), []).append(i)
            self._groups = (joins, groups)
        return self._groups[1]

    def _update_group(self, members: list[int], all_grads: list[torch.Tensor | None],
                      local_rate: float, local_decay: float) -> None:
        """Caffe's per-param Normalize, Regularize, ComputeUpdateValue and
        Update, for params sharing one rate and decay."""
        param = self.param
        blobs = [self.params[i].blob for i in members]
        # A param no loss reaches still decays: its diff is 0.
        grads = [torch.zeros_like(blobs[k]) if all_grads[i] is None else all_grads[i]
                 for k, i in enumerate(members)]
        normalize(grads, param.iter_size)
        regularize(grads, blobs, local_decay, param.regularization_type)
        history = [[blobs_set[i] for i in members] for blobs_set in self.history]
        updates = self.rule.compute(grads, history, local_rate, self.hyper, self.iter)
        torch._foreach_sub_(blobs, updates)
        if param.snapshot_diff:
            # Caffe's diff holds the update after Update(); snapshots save it.
            for blob, update in zip(blobs, updates):
                blob.grad = update.clone()

    # -- testing ----------------------------------------------------------
    def test_all(self) -> None:
        for i in range(len(self.test_nets)):
            if self.requested_early_exit:
                break
            self.test(i)

    def test(self, index: int) -> None:
        with using_flags(self.precision.flags()), self.precision.autocast():
            self._test(index)

    def _test(self, index: int) -> None:
        param = self.param
        logger.info("Iteration %d, Testing net (#%d)", self.iter, index)
        net = self.test_nets[index]
        net.share_trained_layers_with(self.net)
        iterations = param.test_iter[index]
        scores = Scores(net)
        with torch.no_grad():
            for _ in range(iterations):
                self._handle_requests_while_testing()
                if self.requested_early_exit:
                    break
                loss = net.forward()
                scores.add(loss if param.test_compute_loss else None)
        if self.requested_early_exit:
            logger.info("Test interrupted.")
            return
        if param.test_compute_loss:
            logger.info("Test loss: %g", scores.mean_loss(iterations))
        for i, (name, mean, weight) in enumerate(scores.means(iterations)):
            logger.info("    Test net output #%d: %s = %g%s", i, name, mean,
                        loss_suffix(weight, mean))

    def _handle_requests_while_testing(self) -> None:
        request = self.action_request()
        while request != SolverAction.NONE:
            if request == SolverAction.SNAPSHOT:
                self.snapshot()
            elif request == SolverAction.STOP:
                self.requested_early_exit = True
            request = self.action_request()

