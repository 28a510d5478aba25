"""BatchNorm → Scale → ReLU run in place as one step (caffe_ft.net.fusion):
the same numbers as the three layers run one by one, bit for bit (forward
values, bottom and param diffs, BatchNorm's running sums) in TRAIN and TEST,
and fewer bytes saved for backward. The unfused run is the same net with
its fusion plan emptied."""
from __future__ import annotations

import pytest
import torch

from caffe_ft.net import Net
from caffe_ft.proto import caffe_pb2
from caffe_ft.protofile import parse_text

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


def chain_net(shape: tuple[int, ...] = (4, 3, 6, 6), bias_term: bool = True,
              relu: str | None = "", between: str = "", phase_stats: str = "",
              scale_top: str = "conv", scale_extra: str = "") -> str:
    """data → conv → BatchNorm → Scale → ReLU (all in place on "conv") → ip → loss.
    `relu` is the ReLU's relu_param body (None: no ReLU); `between` a layer
    put between the BatchNorm and the Scale; `scale_top` the Scale's top;
    `scale_extra` more of the Scale's LayerParameter fields."""
    relu_layer = "" if relu is None else (
        f'layer {{ name: "relu" type: "ReLU" bottom: "conv" top: "conv" '
        f'relu_param {{ {relu} }} }}')
    return f"""
    force_backward: true
    layer {{ name: "data" type: "Input" top: "data" top: "label"
             input_param {{ shape {{ dim: {' dim: '.join(map(str, shape))} }}
                            shape {{ dim: {shape[0]} }} }} }}
    layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv"
             convolution_param {{ num_output: 5 kernel_size: 3
                                  weight_filler {{ type: "gaussian" std: 0.5 }}
                                  bias_filler {{ type: "gaussian" std: 0.5 }} }} }}
    layer {{ name: "bn" type: "BatchNorm" bottom: "conv" top: "conv"
             batch_norm_param {{ moving_average_fraction: 0.9 eps: 0.001 {phase_stats} }} }}
    {between}
    layer {{ name: "scale" type: "Scale" bottom: "conv" top: "{scale_top}" {scale_extra}
             scale_param {{ bias_term: {str(bias_term).lower()}
                            filler {{ type: "gaussian" mean: 1 std: 0.5 }}
                            bias_filler {{ type: "gaussian" std: 0.5 }} }} }}
    {relu_layer}
    layer {{ name: "ip" type: "InnerProduct" bottom: "{scale_top}" top: "ip"
             inner_product_param {{ num_output: 3
                                    weight_filler {{ type: "gaussian" std: 0.3 }} }} }}
    layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }}
    """


def build_pair(text: str, phase: int, unfuse: bool = True) -> tuple[Net, Net]:
    """The net twice with the same weights: fused, and (`unfuse`) with no chain fused."""
    param = parse_text(text, caffe_pb2.NetParameter())
    fused, unfused = Net(param, phase), Net(param, phase)
    if unfuse:
        unfused.fusion.chains.clear()
    generator = torch.Generator().manual_seed(3)
    for a, b in zip(fused.layers, unfused.layers):
        for pa, pb in zip(a.blobs, b.blobs):
            with torch.no_grad():
                if a.param.type == "BatchNorm":  # running sums of some earlier batches
                    pa.copy_(torch.rand(pa.shape, generator=generator) * 4 + 0.5)
                pb.copy_(pa)
    return fused, unfused


def feed(net: Net, step: int) -> None:
    generator = torch.Generator().manual_seed(10 + step)
    shape = net.blob_shapes["data"]
    net.set_blob_data("data", torch.randn(shape, generator=generator) * 2 + 1)
    net.set_blob_data("label", torch.randint(0, 3, shape[:1], generator=generator).float())


def run(net: Net, steps: int = 2) -> dict[str, torch.Tensor]:
    """Everything a step computes, over `steps` forward/backward passes."""
    seen: dict[str, torch.Tensor] = {}
    for step in range(steps):
        feed(net, step)
        net.clear_param_diffs()
        net.forward()
        net.backward()
        for name in net.blob_names:
            seen[f"{step}/blob/{name}"] = net.blob_data(name).detach().clone()
        # Layer by layer the diff is the blob's; in one autograd pass, the input leaf's grad.
        diff = net.blob_diff("data") if net.keep_blob_diffs else net.blob_data("data").grad
        seen[f"{step}/diff/data"] = diff.clone()
        for layer in net.layers:
            for i, blob in enumerate(layer.blobs):
                seen[f"{step}/param/{layer.name}/{i}"] = blob.detach().clone()
                if blob.grad is not None:
                    seen[f"{step}/paramdiff/{layer.name}/{i}"] = blob.grad.clone()
    return seen


def assert_identical(fused: dict[str, torch.Tensor], unfused: dict[str, torch.Tensor]) -> None:
    assert fused.keys() == unfused.keys()
    for key in unfused:
        assert torch.equal(fused[key], unfused[key]), key


CASES = {
    "bn-scale-relu": {},
    "no-bias": {"bias_term": False},
    "leaky": {"relu": "negative_slope: 0.25"},
    "no-relu": {"relu": None},
    # A 1x1 conv output with one image: one value per channel, the case
    # torch's batch_norm refuses, runs layer by layer inside the chain.
    "one-value-per-channel": {"shape": (1, 3, 3, 3)},
}


@pytest.mark.parametrize("phase", [TRAIN, TEST], ids=["TRAIN", "TEST"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_fused_chain_is_bit_identical(case: str, phase: int) -> None:
    fused, unfused = build_pair(chain_net(**CASES[case]), phase)
    relu_last = CASES[case].get("relu", "") is not None
    assert fused.fusion.chains == {2: 4 if relu_last else 3}
    results = run(fused)
    assert_identical(results, run(unfused))
    if phase == TRAIN:  # the running sums moved, as Caffe's TRAIN forward moves them
        assert not torch.equal(results["1/param/bn/2"], results["0/param/bn/2"])


def test_global_stats_in_train_is_bit_identical() -> None:
    fused, unfused = build_pair(chain_net(phase_stats="use_global_stats: true"), TRAIN)
    assert fused.fusion.chains == {2: 4}
    assert_identical(run(fused), run(unfused))


def test_layer_by_layer_backward_sees_the_same_numbers() -> None:
    """pycaffe's mode (every blob's diff kept) runs the layers one by one;
    its param diffs are the fused solver step's."""
    fused, by_layer = build_pair(chain_net(), TRAIN, unfuse=False)
    by_layer.keep_blob_diffs = True
    assert by_layer.fusion.chains  # planned, but not run while diffs are kept
    results, layered = run(fused), run(by_layer)
    assert_identical(results, layered)
    assert by_layer.blob_diff("conv") is not None


def saved_bytes(net: Net) -> int:
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    feed(net, 0)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        net.forward()
    return sum(storages.values())


def test_fused_chain_saves_one_blob_less() -> None:
    """Unfused, the BatchNorm's top is saved (by the Scale) besides its bottom
    and the ReLU's top; fused, it is recomputed in backward."""
    fused, unfused = build_pair(chain_net(shape=(8, 3, 18, 18)), TRAIN)
    blob_bytes = 4 * torch.Size(fused.blob_shapes["conv"]).numel()
    assert saved_bytes(unfused) - saved_bytes(fused) >= blob_bytes


@pytest.mark.parametrize("variant", [
    # The Scale writes another blob: the BatchNorm's top stays readable.
    {"scale_top": "scaled", "relu": None},
    # No diff flows from the Scale into the BatchNorm.
    {"scale_extra": "propagate_down: false"},
    # Another layer runs between the BatchNorm and the Scale.
    {"between": 'layer { name: "other" type: "Power" bottom: "label" top: "other" }'},
], ids=["not-in-place", "propagate-down", "layer-between"])
def test_no_chain_where_the_chain_is_observed(variant: dict) -> None:
    net = Net(parse_text(chain_net(**variant), caffe_pb2.NetParameter()), TRAIN)
    assert net.fusion.chains == {}


def test_negative_slope_relu_stays_outside_the_chain() -> None:
    """In place, Caffe's ReLU with negative_slope < 0 reads its overwritten
    bottom; the chain ends at the Scale and the ReLU runs by itself."""
    fused, unfused = build_pair(chain_net(relu="negative_slope: -0.5"), TRAIN)
    assert fused.fusion.chains == {2: 3}
    assert_identical(run(fused), run(unfused))


def test_a_layer_range_that_cuts_the_chain_runs_it_layer_by_layer() -> None:
    fused, unfused = build_pair(chain_net(), TRAIN)
    feed(fused, 0)
    feed(unfused, 0)
    fused.forward(end=3)  # BatchNorm and Scale only: the ReLU has not run
    unfused.forward(end=3)
    assert torch.equal(fused.blob_data("conv"), unfused.blob_data("conv"))
    assert bool((fused.blob_data("conv") < 0).any())


@pytest.mark.parametrize("phase", [TRAIN, TEST], ids=["TRAIN", "TEST"])
@pytest.mark.parametrize("case", ["bn-scale-relu", "no-bias", "leaky", "no-relu"])
def test_fused_chain_under_autocast_is_one_affine_batch_norm(case: str, phase: int) -> None:
    """The solver's bf16 mode, where Caffe's float32 bits are not asked
    for: the chain is one batch norm with the Scale as its affine, in the
    bf16 of the convolution before it (layer by layer the Scale promotes
    to float32), so every value is the layers' to bf16's precision."""
    fused, unfused = build_pair(chain_net(**CASES[case]), phase)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        results, expected = run(fused), run(unfused)
        assert fused.blob_data("conv").dtype == torch.bfloat16
    assert results.keys() == expected.keys()
    for key, value in expected.items():
        got, want = results[key].flatten().float(), value.flatten().float()
        if "diff" not in key:
            # Values: bf16 keeps 8 bits, so a few of its steps of the blob's largest value.
            assert (got - want).abs().max() <= 2 ** -6 * want.abs().max() + 1e-6, key
        elif not (phase == TRAIN and key.endswith("paramdiff/conv/1")):
            # Diffs through a batch norm's mean subtraction lose more bits
            # either way: the same direction. (The conv bias's diff before a
            # TRAIN batch norm is 0 but for rounding, in both.)
            assert torch.cosine_similarity(got, want, dim=0) > 0.99, key


def test_fused_chain_under_torch_compile_is_bit_identical() -> None:
    """The solver's -compile captures the net's forward, chains included."""
    fused, unfused = build_pair(chain_net(), TRAIN)
    fused.forward = torch.compile(fused.forward, dynamic=False, backend="aot_eager")
    assert_identical(run(fused), run(unfused))
