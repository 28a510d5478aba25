"""Caffe's random numbers draw for draw: the ziggurat tables from their
definition, torch's default generator as Caffe's global stream, boost's
distributions against a draw-by-draw walk of the same algorithm, glibc's
rand() against the C library's, and the fillers against the weights real
Caffe drew with seed 1701 (every golden layer case, and the weights every
golden solver run started from)."""
from __future__ import annotations

import json
from decimal import Decimal

import numpy as np
import pytest
import torch

from caffe_ft.net import Net
from caffe_ft.proto import caffe_pb2
from caffe_ft.protofile import read_binary, read_text
from caffe_ft.rng import boost
from caffe_ft.rng.c_rand import GlibcRand
from caffe_ft.rng.engine import CaffeRNG, RawCursor, engine_at, init_genrand
from caffe_ft.rng.global_rng import caffe_rng
from caffe_ft.rng.ziggurat import (
    EXPONENTIAL_CURVE,
    EXPONENTIAL_R,
    NORMAL_CURVE,
    NORMAL_R,
    exponential_table,
    normal_table,
    top_overshoot,
)
from conftest import FIXTURES

GOLDEN_LAYERS = FIXTURES / "golden_layers"
RANDOM_FILLERS = ("gaussian", "xavier", "msra", "uniform", "positive_unitball")


def cursor(seed: int) -> RawCursor:
    return RawCursor(engine_at(init_genrand(seed), 624))


# -- the ziggurat tables ------------------------------------------------------
@pytest.mark.parametrize("r,layers,curve", [(NORMAL_R, 128, NORMAL_CURVE),
                                            (EXPONENTIAL_R, 256, EXPONENTIAL_CURVE)])
def test_r_is_the_root_that_ends_the_top_layer_at_one(r: Decimal, layers: int, curve) -> None:
    # Far finer than a double's 17 digits, coarse enough for 34-digit sums.
    step = Decimal("1e-20")
    assert top_overshoot(r - step, layers, *curve) > 0 > top_overshoot(r + step, layers, *curve)


@pytest.mark.parametrize("table,f,layers", [
    (normal_table(), lambda x: np.exp(-x * x / 2), 128),
    (exponential_table(), lambda x: np.exp(-x), 256)])
def test_tables_have_boosts_shape(table, f, layers: int) -> None:
    assert len(table.x) == len(table.y) == layers + 1
    assert np.all(np.diff(table.x) < 0) and table.x[-1] == 0
    assert table.y[0] == 0 and table.y[-1] == 1
    np.testing.assert_allclose(table.y[1:-1], f(table.x[1:-1]), rtol=1e-15)
    # Every layer has the base's area: (y_(i+1) - y_i) · x_i is the same for all.
    areas = (table.y[2:] - table.y[1:-1]) * table.x[1:-1]
    np.testing.assert_allclose(areas, table.x[0] * table.y[1], rtol=1e-12)


# -- the global stream --------------------------------------------------------
def test_the_global_stream_is_mt19937_of_the_seed_and_torch_carries_on() -> None:
    reference = CaffeRNG(1701)
    expected = [reference.raw() for _ in range(1400)]
    torch.manual_seed(1701)
    seen: list[int] = []
    for count in (1, 5, 700, 3, 624):
        with caffe_rng() as stream:
            seen.extend(int(v) for v in stream.take(count))
    # torch's own full-range draw takes the next two outputs, high word first.
    pair = int(torch.empty((), dtype=torch.int64).random_(-2**63, None)) & (2**64 - 1)
    seen.extend([pair >> 32, pair & 0xFFFFFFFF])
    with caffe_rng() as stream:
        stream.peek(5000)  # looked at, not taken: the stream does not move
    with caffe_rng() as stream:
        seen.extend(int(v) for v in stream.take(10))
    assert seen == expected[:len(seen)]


# -- the distributions ---------------------------------------------------------
def _draw_by_draw(seed: int, n: int) -> tuple[np.ndarray, int]:
    """boost's normal loop, one attempt at a time."""
    stream = cursor(seed)
    values: list[np.float32] = []
    while len(values) < n:
        value = boost._normal_attempt(stream)
        if value is not None:
            values.append(value)
    return np.array(values, np.float32), stream.consumed


@pytest.mark.parametrize("seed", [1, 1701])
def test_normal_takes_the_draws_of_boosts_loop(seed: int) -> None:
    expected, consumed = _draw_by_draw(seed, 150_000)
    whole = cursor(seed)
    np.testing.assert_array_equal(boost.normal(whole, 150_000, 0.0, 1.0), expected)
    assert whole.consumed == consumed
    pieces = cursor(seed)
    parts = [boost.normal(pieces, n, 0.0, 1.0) for n in [1] * 50 + [7] * 50 + [149_600]]
    np.testing.assert_array_equal(np.concatenate(parts), expected)
    assert pieces.consumed == consumed


def test_normal_after_a_tail_that_ends_inside_a_run_of_slow_draws() -> None:
    # With seed 126, within the first 20,000 values, a tail attempt's draws
    # end where the next two draws would both fail the quick test: the walk
    # starts an attempt at the second (the first was the tail's), against
    # the alternation counted from the run's first draw.
    expected, consumed = _draw_by_draw(126, 20_000)
    stream = cursor(126)
    np.testing.assert_array_equal(boost.normal(stream, 20_000, 0.0, 1.0), expected)
    assert stream.consumed == consumed


def test_normal_with_tiny_windows_still_takes_boosts_draws(monkeypatch) -> None:
    # Windows of 1 draw with room for 1 more: a tail at a window's start runs
    # past the draws in view and is drawn from the stream itself.
    monkeypatch.setattr(boost, "_WINDOW", 1)
    monkeypatch.setattr(boost, "_HEADROOM", 1)
    expected, consumed = _draw_by_draw(11, 40_000)
    stream = cursor(11)
    np.testing.assert_array_equal(boost.normal(stream, 40_000, 0.0, 1.0), expected)
    assert stream.consumed == consumed


def test_normal_reaches_the_tail_and_has_unit_spread() -> None:
    values = boost.normal(cursor(3), 400_000, 0.0, 1.0)
    assert np.abs(values).max() > normal_table().x[1]  # the tail was sampled
    assert abs(values.mean()) < 0.01 and abs(values.std() - 1) < 0.01


class _FixedDraws(RawCursor):
    """A cursor over given draws, to reach rare branches on purpose."""

    def __init__(self, draws: list[int]) -> None:
        self._draws = np.array(draws, np.uint32)
        self.consumed = 0

    def peek(self, n: int) -> np.ndarray:
        return self._draws[self.consumed:]

    def take(self, n: int) -> np.ndarray:
        self.consumed += n
        return self._draws[self.consumed - n:self.consumed]

    def one(self) -> int:
        return int(self.take(1)[0])


def test_uniform_redraws_what_rounds_up_to_the_top() -> None:
    # 2**32 - 1 rounds to 2**32 in float: 1 · span + low reaches high.
    stream = _FixedDraws([0, 0xFFFFFFFF, 1 << 31, 0xFFFFFFF0, 1 << 30])
    values = boost.uniform_real(stream, 3, -1.0, 1.0)
    np.testing.assert_array_equal(values, np.float32([-1.0, 0.0, -0.5]))
    assert stream.consumed == 5


def test_bernoulli_compares_in_its_own_precision() -> None:
    # 2**31 + 128 is above p · (2**32 - 1) for p = 0.5 in double, not in float.
    draws = [(1 << 31) + 128] * 2
    assert not boost.bernoulli(_FixedDraws(draws), 1, 0.5, np.float64)[0]
    assert boost.bernoulli(_FixedDraws(draws), 1, 0.5, np.float32)[0]
    none = _FixedDraws(draws)
    assert not boost.bernoulli(none, 2, 0.0).any() and none.consumed == 0


# -- Caffe's own draws ---------------------------------------------------------
def _random_cases() -> list[str]:
    return sorted(p.name for p in GOLDEN_LAYERS.iterdir()
                  if any(f'"{kind}"' in (p / "net.prototxt").read_text()
                         for kind in RANDOM_FILLERS))


@pytest.mark.parametrize("case", _random_cases())
def test_fillers_draw_what_caffe_drew_with_seed_1701(case: str) -> None:
    folder = GOLDEN_LAYERS / case
    meta = json.loads((folder / "meta.json").read_text())
    torch.manual_seed(1701)
    net = Net(read_text(folder / "net.prototxt", caffe_pb2.NetParameter()),
              getattr(caffe_pb2, meta["phase"]), source=str(folder / "net.prototxt"))
    caffe = read_binary(folder / "weights.caffemodel", caffe_pb2.NetParameter())
    for layer in caffe.layer:
        for i, blob in enumerate(layer.blobs):
            mine = net.params_of(layer.name)[i].detach().numpy().ravel()
            np.testing.assert_array_equal(mine, np.array(blob.data, np.float32),
                                          err_msg=f"{layer.name} blob {i}")


def test_cpu_dropout_drops_what_caffes_bernoulli_in_double_drops() -> None:
    from caffe_ft.layers.common import Dropout
    param = caffe_pb2.LayerParameter(name="drop", type="Dropout", bottom=["x"], top=["y"])
    param.dropout_param.dropout_ratio = 0.3
    layer = Dropout(param, caffe_pb2.TRAIN)
    layer.setup([(4, 50)])
    torch.manual_seed(5)
    y = layer(torch.ones(4, 50))[0]
    stream = CaffeRNG(5)
    draws = np.array([stream.raw() for _ in range(200)], np.float64)
    keep = draws <= (1.0 - float(np.float32(0.3))) * 4294967295.0
    np.testing.assert_array_equal(y.numpy().ravel() != 0, keep)
    np.testing.assert_array_equal(y.numpy().ravel()[keep], np.float32(1 / np.float32(0.7)))



# -- C's rand() ------------------------------------------------------------------
def test_glibc_rand_is_glibcs() -> None:
    import ctypes
    import ctypes.util
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    if not hasattr(libc, "gnu_get_libc_version"):
        pytest.skip("the C library here is not glibc")
    for seed in (1, 0, 42, 2**31 + 5):
        libc.srand(ctypes.c_uint(seed))
        ours = GlibcRand(seed)
        assert [ours.rand() for _ in range(2000)] == [libc.rand() for _ in range(2000)]


def test_random_shuffle_swaps_each_element_with_an_earlier_one() -> None:
    items = list(range(6))
    GlibcRand(1).random_shuffle(items)
    draws = GlibcRand(1)
    expected = list(range(6))
    for i in range(1, 6):
        j = draws.rand() % (i + 1)
        expected[i], expected[j] = expected[j], expected[i]
    assert items == expected


def _cases_caffe_filled() -> list[str]:
    from test_solver_golden import GOLDEN
    # finetune_renamed_frozen starts from a trained LeNet, not from fillers.
    return sorted(p.name for p in GOLDEN.iterdir()
                  if (p / "init.caffemodel").exists() and p.name != "finetune_renamed_frozen")


@pytest.mark.parametrize("case", _cases_caffe_filled())
def test_a_seeded_solver_fills_the_weights_caffes_train_started_from(case: str,
                                                                    tmp_path) -> None:
    """Each golden solver case's init.caffemodel is what Caffe's fillers drew
    with the case's random_seed: a Solver without -weights starts there too."""
    from caffe_ft.solver import Solver
    from caffe_ft.upgrade import read_solver_text
    from test_solver_golden import GOLDEN, read_model, stage_case
    path = str(stage_case(case, tmp_path) / "solver.prototxt")
    solver = Solver(read_solver_text(path), path)
    caffe = read_model(GOLDEN / case / "init.caffemodel")
    for name, blobs in caffe.items():
        for mine, theirs in zip(solver.net.params_of(name), blobs, strict=True):
            np.testing.assert_array_equal(mine.detach().numpy().ravel(),
                                          np.asarray(theirs, np.float32).ravel(), err_msg=name)


def test_a_generator_state_read_wrongly_is_refused(monkeypatch) -> None:
    from caffe_ft.errors import CaffeError
    from caffe_ft.rng import global_rng
    before = torch.get_rng_state()
    monkeypatch.setattr(global_rng, "_LEFT", slice(12, 16))  # the `seeded` field instead
    global_rng._check_layout.cache_clear()
    try:
        with pytest.raises(CaffeError, match="layout Caffe's random draws cannot be read"):
            with caffe_rng():
                pass
    finally:
        global_rng._check_layout.cache_clear()
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize("steps", [
    [("take", 5)],
    [("take", 3), ("peek", 10), ("take", 4), ("take", 20)],
    [("peek", 2), ("take", 2), ("take", 7), ("peek", 1), ("take", 1)],
    [("take", 1), ("peek", 5000), ("take", 4999), ("take", 3), ("peek", 2)],
])
def test_cursor_consumes_exactly_the_draws_taken(steps: list[tuple[str, int]]) -> None:
    """Exact takes read the engine directly, peeks read ahead; either way
    the draws come in stream order and the engine after the cursor stands
    right past the draws taken."""
    reference = CaffeRNG(77)
    ours = cursor(77)
    taken = 0
    for kind, n in steps:
        if kind == "take":
            assert list(ours.take(n)) == [reference.raw() for _ in range(n)]
            taken += n
        else:
            assert len(ours.peek(n)) >= n
    after = RawCursor(ours.engine_after())
    fresh = CaffeRNG(77)
    for _ in range(taken):
        fresh.raw()
    assert list(after.take(5)) == [fresh.raw() for _ in range(5)]
