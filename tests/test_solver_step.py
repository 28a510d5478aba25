"""The training step's cost: multi-tensor updates equal the per-tensor ones
bit for bit, frozen params cost nothing, and an iteration that neither
displays, tests nor snapshots never waits for the device."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from caffe_ft.solver import Solver
from caffe_ft.solver.update_rules import RULES, Hyper
from solver_helpers import captured_log, make_solver, weights

# A LeNet-sized net: convolution, pooling, two InnerProducts, a frozen
# layer (lr_mult 0), Accuracy and SoftmaxWithLoss in the TRAIN phase.
CONV_NET = '''
name: "small"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 8 dim: 5 } shape { dim: 8 } } }
layer { name: "frozen" type: "InnerProduct" bottom: "data" top: "frozen"
        param { lr_mult: 0 } param { lr_mult: 0 }
        inner_product_param { num_output: 8 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "reshape" type: "Reshape" bottom: "frozen" top: "image"
        reshape_param { shape { dim: 8 dim: 2 dim: 2 dim: 2 } } }
layer { name: "conv" type: "Convolution" bottom: "image" top: "conv"
        convolution_param { num_output: 4 kernel_size: 1 weight_filler { type: "xavier" } } }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc1" type: "InnerProduct" bottom: "pool" top: "fc1"
        param { lr_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
        inner_product_param { num_output: 6 weight_filler { type: "xavier" } } }
layer { name: "relu" type: "ReLU" bottom: "fc1" top: "fc1" }
layer { name: "fc2" type: "InnerProduct" bottom: "fc1" top: "fc2"
        inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc2" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "fc2" bottom: "label" top: "acc" }
layer { name: "per_class" type: "Accuracy" bottom: "fc2" bottom: "label" top: "acc2"
        top: "per_class" }
'''

# Every way a tensor's value reaches the host, or a size the host must wait for.
HOST_READS = ("item", "__bool__", "__int__", "__float__", "tolist", "cpu", "numpy",
              "nonzero")
# Tensors made from host values: on a GPU, a copy that waits for the device.
HOST_COPIES = ("tensor", "as_tensor")


@pytest.fixture
def host_reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Names of the tensor methods that read a value to the host, in call order."""
    calls: list[str] = []
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def counted(self: torch.Tensor, *args: object, _name: str = name,
                    _original: object = original, **kwargs: object) -> object:
            calls.append(_name)
            return _original(self, *args, **kwargs)  # type: ignore[operator]
        monkeypatch.setattr(torch.Tensor, name, counted)
    for name in HOST_COPIES:
        original = getattr(torch, name)

        def copied(*args: object, _name: str = name, _original: object = original,
                   **kwargs: object) -> object:
            calls.append(f"torch.{_name}")
            return _original(*args, **kwargs)  # type: ignore[operator]
        monkeypatch.setattr(torch, name, copied)
    yield calls


@pytest.mark.parametrize("kind", sorted(RULES))
def test_multi_tensor_rule_equals_per_tensor_bit_for_bit(kind: str) -> None:
    rule = RULES[kind]
    hp = Hyper(0.9 if kind not in ("AdaGrad", "RMSProp") else 0.0, 0.999, 1e-8, 0.98)
    generator = torch.Generator().manual_seed(3)
    shapes = [(4, 3), (3,), (2, 2, 2)]
    grouped = [[torch.zeros(s) for s in shapes] for _ in range(rule.history_sets)]
    single = [[h.clone() for h in hs] for hs in grouped]
    for it, lr in enumerate([0.1, 0.05, 0.01]):
        grads = [torch.randn(s, generator=generator) for s in shapes]
        together = rule.compute([g.clone() for g in grads], grouped, lr, hp, it)
        apart = [rule.compute([g.clone()], [[hs[i]] for hs in single], lr, hp, it)[0]
                 for i, g in enumerate(grads)]
        for a, b in zip(together, apart):
            assert torch.equal(a, b)
    for hs_a, hs_b in zip(grouped, single):
        for a, b in zip(hs_a, hs_b):
            assert torch.equal(a, b)


def test_frozen_params_are_skipped_and_stay_put() -> None:
    solver = make_solver('type: "SGD"', net=CONV_NET)
    frozen = [i for i, p in enumerate(solver.params) if p.lr_mult == 0]
    assert frozen and set(frozen) == solver._skippable
    grads = [p.blob.grad for p in solver.params]
    updated = {i for members in solver._update_groups(grads).values() for i in members}
    assert updated.isdisjoint(frozen)
    before = weights(solver)
    solver.step(3)
    after = weights(solver)
    for i in frozen:
        assert torch.equal(before[i], after[i])
    assert any(not torch.equal(before[i], after[i])
               for i in range(len(before)) if i not in frozen)


# The losses whose normalizer is a count the host knows (BATCH_SIZE, FULL,
# VALID without ignore_label), which must not be copied to the device.
LOSSES_NET = CONV_NET.replace(
    'top: "loss" }',
    'top: "loss" loss_param { normalization: BATCH_SIZE } }\n'
    'layer { name: "full" type: "SoftmaxWithLoss" bottom: "fc2" bottom: "label" top: "full" '
    'loss_param { normalization: FULL } }\n'
    'layer { name: "sig" type: "SigmoidCrossEntropyLoss" bottom: "fc1" bottom: "fc1" '
    'top: "sig" }\n'
    'layer { name: "ignoring" type: "SoftmaxWithLoss" bottom: "fc2" bottom: "label" '
    'top: "ignoring" loss_param { ignore_label: 2 } }')


@pytest.mark.parametrize("kind, net", [("SGD", CONV_NET), ("Adam", CONV_NET),
                                       ("SGD", LOSSES_NET)])
def test_no_host_reads_between_displays(kind: str, net: str, host_reads: list[str]) -> None:
    solver = make_solver(f'type: "{kind}" display: 5 average_loss: 3', net=net)
    per_iteration: dict[int, int] = {}

    def mark(s: object) -> None:
        per_iteration[solver.iter] = len(host_reads)
    solver.start_hooks.append(mark)
    solver.step(10)
    starts = [per_iteration[i] for i in range(10)]
    reads = {i: starts[i + 1] - starts[i] for i in range(9)}
    # Iterations 0 and 5 display; every other one (1-4, 6-8) reads nothing.
    quiet = {i: n for i, n in reads.items() if i not in (0, 5)}
    assert quiet == dict.fromkeys(quiet, 0), host_reads
    assert reads[0] > 0 and reads[5] > 0


def recorded_losses(solver: Solver) -> list[np.float32]:
    """The list every iteration's loss is appended to, as the solver computes it."""
    losses: list[np.float32] = []
    original = solver._forward_backward

    def recording() -> torch.Tensor:
        loss = original()
        losses.append(np.float32(loss.item()))
        return loss
    solver._forward_backward = recording  # type: ignore[method-assign]
    return losses


def test_smoothed_loss_matches_caffes_float32_sums() -> None:
    """Losses read in one transfer at display give Caffe's smoothed value:
    the same float32 running mean and ring buffer as one read per iteration."""
    solver = make_solver("display: 4 average_loss: 3", net=CONV_NET)
    losses = recorded_losses(solver)
    solver.step(8)
    value = np.float32(0)
    window: list[np.float32] = []
    for i, loss in enumerate(losses):
        if len(window) < 3:
            window.append(loss)
            value = (value * np.float32(len(window) - 1) + loss) / np.float32(len(window))
        else:
            value += (loss - window[i % 3]) / np.float32(3)
            window[i % 3] = loss
    assert solver.display_loss.value == value


def test_a_loop_of_single_steps_never_waits_for_the_device(host_reads: list[str]) -> None:
    """pycaffe's `for _ in range(n): solver.step(1)` on a GPU: a step() call
    that ends between displays leaves its loss on the device."""
    solver = make_solver('type: "SGD" display: 0', net=CONV_NET)
    solver.display_loss.lazy = True  # as on a GPU
    solver.step(1)  # first calls: lazy setup may read sizes
    host_reads.clear()
    for _ in range(5):
        solver.step(1)
    assert host_reads == []


@pytest.mark.parametrize("lazy", [False, True])
def test_pending_losses_fold_into_the_step_call_that_made_them(lazy: bool) -> None:
    """Caffe's Step starts its smoothed loss afresh: losses left pending by
    one step() call are not averaged into the next call's."""
    solver = make_solver("display: 0 average_loss: 4", net=CONV_NET)
    solver.display_loss.lazy = lazy
    losses = recorded_losses(solver)
    solver.step(3)
    solver.step(2)
    assert solver.display_loss.value == (losses[3] + losses[4]) / np.float32(2)


def test_a_non_finite_loss_left_pending_is_reported_at_the_next_read() -> None:
    solver = make_solver("display: 0", net=CONV_NET)
    solver.display_loss.lazy = True
    solver.step(1)
    solver.net.set_blob_data("data", torch.full((8, 5), float("nan")))
    with captured_log() as messages:
        solver.step(1)
        assert not any("not finite" in m for m in messages)
        assert np.isnan(solver.display_loss.value)  # the read reports it
    assert any(m.startswith("Iteration 1, loss = nan: the loss is not finite") for m in messages)


def test_a_frozen_param_given_a_diff_joins_an_adaptive_update() -> None:
    """The update groups are kept between iterations, but a frozen param
    whose diff appears (force_backward, or written from Python) still joins
    an adaptive rule's update, which folds the diff into its history."""
    solver = make_solver('type: "Adam" weight_decay: 0', net=CONV_NET)
    frozen = sorted(solver._skippable)
    assert frozen
    grads: list[torch.Tensor | None] = [None] * len(solver.params)
    assert not any(i in members for members in solver._update_groups(grads).values()
                   for i in frozen)
    grads[frozen[0]] = torch.ones_like(solver.params[frozen[0]].blob)
    assert any(frozen[0] in members for members in solver._update_groups(grads).values())
    grads[frozen[0]] = None
    assert not any(frozen[0] in members for members in solver._update_groups(grads).values())


def test_a_test_reads_its_sums_once_not_per_batch(host_reads: list[str]) -> None:
    """On a GPU a test batch does not wait for the one before it: the sums
    stay on the device, and the host reads them when the test logs."""
    counts = []
    for batches in (2, 6):
        solver = make_solver(f"test_iter: {batches} test_interval: 100 test_compute_loss: true",
                             net=CONV_NET)
        host_reads.clear()
        solver.test_all()
        counts.append(len(host_reads))
    assert counts[0] == counts[1], host_reads


def test_solve_reports_a_non_finite_loss_left_pending_without_display() -> None:
    solver = make_solver("display: 0 max_iter: 3", net=CONV_NET)
    solver.display_loss.lazy = True  # as on a GPU
    solver.net.set_blob_data("data", torch.full((8, 5), float("nan")))
    with captured_log() as messages:
        solver.solve()
    assert any(m.startswith("Iteration 0, loss = nan: the loss is not finite") for m in messages)
