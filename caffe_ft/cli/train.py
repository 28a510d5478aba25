"""Runs `caffe_ft train|test|time|device_query` (declared with their flags in
caffe_ft.cli.actions): Caffe's `caffe` tool, with its checks, log lines and
outputs (tools/caffe.cpp)."""
from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from caffe_ft.cli.devices import device_for, gpu_ids, out_of_memory_is_an_error
from caffe_ft.cli.flags import flag_arguments
from caffe_ft.cli.timing import time_net
from caffe_ft.errors import CaffeError, UsageError
from caffe_ft.glog import logger, setup_logging
from caffe_ft.net import Net
from caffe_ft.net.weights import copy_trained_layers_from
from caffe_ft.parity import default_parity, set_parity_mode
from caffe_ft.proto import caffe_pb2
from caffe_ft.solver import SignalHandler, Solver, SolverAction
from caffe_ft.solver.launch import spawn_ranks
from caffe_ft.solver.parallel import (DataParallel, join_process_group, launched_world_size,
                                      leave_process_group)
from caffe_ft.solver.scores import Scores, loss_suffix, output_values
from caffe_ft.solver.signals import action_from_flag
from caffe_ft.upgrade import read_net_text, read_solver_text

f32 = np.float32


def stages(flag: str) -> list[str]:
    # boost::split of "" yields one empty stage, which Caffe adds too.
    return flag.split(",")


def _net(flags: dict[str, Any], phase: int) -> tuple[Net, torch.device]:
    """-model for `phase` at -level and -stage, on the device -gpu names."""
    device = device_for(gpu_ids(flags["gpu"]))
    set_parity_mode(default_parity())  # this process is the CLI's run: Caffe's float32
    net = Net(read_net_text(flags["model"]), phase, flags["level"], stages(flags["stage"]),
              source=flags["model"]).to(device)
    return net, device


# -- train ------------------------------------------------------------------
@out_of_memory_is_an_error
def train_action(flags: dict[str, Any], args: list[str]) -> int:
    _check_train_flags(flags)
    setup_logging()
    param = _read_solver_params(flags)
    gpu = _gpu_flag_or_solver_mode(flags["gpu"], param)
    ids = gpu_ids(gpu)
    world_size = launched_world_size()
    if len(ids) > 1 and world_size == 1:
        # One process per GPU, each re-running this command as one rank.
        return spawn_ranks(["train", *flag_arguments({**flags, "gpu": gpu})], len(ids))
    device, rank = _join_ranks(ids, gpu, world_size)
    try:
        _use_devices(ids, device, param)
        handler = SignalHandler(action_from_flag(flags["sigint_effect"]),
                                action_from_flag(flags["sighup_effect"]))
        _replace_weights(flags, param)
        with handler:
            _solve(_solver(param, flags, device, handler.check, rank), world_size)
    finally:
        leave_process_group()
    logger.info("Optimization Done.")
    return 0


def _check_train_flags(flags: dict[str, Any]) -> None:
    if not flags["solver"]:
        raise UsageError("Need a solver definition to train.")
    if flags["snapshot"] and flags["weights"]:
        raise UsageError("Give a snapshot to resume training or weights to finetune but not "
                         "both.")


def _read_solver_params(flags: dict[str, Any]) -> caffe_pb2.SolverParameter:
    param = read_solver_text(flags["solver"])
    # -level and -stage describe the train net only; test nets keep test_state.
    param.train_state.level = flags["level"]
    param.train_state.stage.extend(stages(flags["stage"]))
    return param


def _gpu_flag_or_solver_mode(gpu: str, param: caffe_pb2.SolverParameter) -> str:
    """Without -gpu, the solver's solver_mode: GPU picks its device_id."""
    if not gpu and param.HasField("solver_mode") and \
            param.solver_mode == caffe_pb2.SolverParameter.GPU:
        if torch.cuda.is_available():
            return str(param.device_id)
        logger.warning("The solver asks for solver_mode: GPU but torch sees no CUDA "
                       "device; training on the CPU")
    return gpu


def _join_ranks(ids: list[int], gpu: str, world_size: int) -> tuple[torch.device, int]:
    """This process's device and rank among the launcher's processes."""
    if len(ids) > 1 and world_size != len(ids):
        raise CaffeError(f"-gpu {gpu} names {len(ids)} GPUs but the launcher started "
                         f"{world_size} processes; start one process per GPU "
                         f"(torchrun --nproc_per_node={len(ids)})")
    device = (torch.device("cuda", ids[int(os.environ.get("LOCAL_RANK", "0"))]) if ids
              else torch.device("cpu"))
    rank = join_process_group(device) if world_size > 1 else 0
    if rank:
        # Caffe's workers log nothing but problems.
        setup_logging(logging.WARNING)
    return device, rank


def _use_devices(ids: list[int], device: torch.device, param: caffe_pb2.SolverParameter) -> None:
    if ids:
        logger.info("Using GPUs %s", ", ".join(str(i) for i in ids))
        for i in ids:
            logger.info("GPU %d: %s", i, torch.cuda.get_device_name(i))
        param.device_id = device.index
    else:
        logger.info("Use CPU.")


def _replace_weights(flags: dict[str, Any], param: caffe_pb2.SolverParameter) -> None:
    if flags["snapshot"] or flags["weights"]:
        # The flags replace the solver's own `weights`.
        del param.weights[:]
        if flags["weights"]:
            param.weights.append(flags["weights"])


def _solver(param: caffe_pb2.SolverParameter, flags: dict[str, Any], device: torch.device,
            action: Callable[[], SolverAction], rank: int) -> Solver:
    """The solver, with the weights it finetunes from, or resumed from -snapshot."""
    solver = Solver(param, flags["solver"], device, action, rank,
                    precision=flags["precision"], compile=flags["compile"])
    solver.divergence.stop = flags["stop_on_nan"]
    if flags["snapshot"]:
        logger.info("Resuming from %s", flags["snapshot"])
        solver.restore(flags["snapshot"])
    return solver


def _solve(solver: Solver, world_size: int) -> None:
    logger.info("Starting Optimization")
    if world_size > 1:
        DataParallel(solver).train()
    else:
        solver.solve()


# -- test -------------------------------------------------------------------
@out_of_memory_is_an_error
def test_action(flags: dict[str, Any], args: list[str]) -> int:
    if not flags["model"]:
        raise UsageError("Need a model definition to score.")
    if not flags["weights"]:
        raise UsageError("Need model weights to score.")
    setup_logging()
    net, _ = _net(flags, caffe_pb2.TEST)
    copy_trained_layers_from(net, flags["weights"])
    iterations = flags["iterations"]
    logger.info("Running for %d iterations.", iterations)
    scores = Scores(net)
    with torch.no_grad():
        for i in range(iterations):
            scores.add(net.forward())
            for name, value in output_values(net):
                logger.info("Batch %d, %s = %g", i, name, value)
    logger.info("Loss: %g", scores.mean_loss(iterations))
    for name, mean, weight in scores.means(iterations):
        logger.info("%s = %g%s", name, mean, loss_suffix(weight, mean))
    return 0


# -- time -------------------------------------------------------------------
@out_of_memory_is_an_error
def time_action(flags: dict[str, Any], args: list[str]) -> int:
    if not flags["model"]:
        raise UsageError("Need a model definition to time.")
    phases = {"": caffe_pb2.TRAIN, "TRAIN": caffe_pb2.TRAIN, "TEST": caffe_pb2.TEST}
    if flags["phase"] not in phases:
        raise UsageError('phase must be "TRAIN" or "TEST"')
    setup_logging()
    net, device = _net(flags, phases[flags["phase"]])
    time_net(net, flags["iterations"], device)
    return 0


# -- device_query -----------------------------------------------------------
def device_query_action(flags: dict[str, Any], args: list[str]) -> int:
    setup_logging()
    logger.info("Querying GPUs %s", flags["gpu"])
    if flags["gpu"] and not torch.cuda.is_available():
        raise CaffeError("torch sees no CUDA device; there is no GPU to query")
    for device in gpu_ids(flags["gpu"]):
        props = torch.cuda.get_device_properties(device)
        rows = [("Device id", device), ("Major revision number", props.major),
                ("Minor revision number", props.minor), ("Name", props.name),
                ("Total global memory", props.total_memory),
                ("Number of multiprocessors", props.multi_processor_count)]
        for label, attribute in (("Total shared memory per block", "shared_memory_per_block"),
                                 ("Total registers per multiprocessor", "regs_per_multiprocessor"),
                                 ("Warp size", "warp_size"),
                                 ("Maximum threads per multiprocessor",
                                  "max_threads_per_multi_processor"),
                                 ("L2 cache size", "L2_cache_size")):
            # Which properties torch reports depends on its version.
            if hasattr(props, attribute):
                rows.append((label, getattr(props, attribute)))
        for label, value in rows:
            logger.info("%s %s", f"{label}:".ljust(30), value)
    return 0
