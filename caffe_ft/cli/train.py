"""`caffe_ft train|test|time|device_query`: Caffe's `caffe` tool, with its
flags, checks, log lines and outputs (tools/caffe.cpp)."""
from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import torch

from caffe_ft.cli import Flag, action, flag_arguments
from caffe_ft.errors import CaffeError, UsageError
from caffe_ft.log import logger, setup_logging
from caffe_ft.proto import caffe_pb2

f32 = np.float32

GPU_FLAG = Flag("gpu", "", "run on these GPU ids, separated by ','; 'all' for every GPU "
                           "(the effective batch size is multiplied by the number of GPUs)")
LEVEL_FLAG = Flag("level", 0, "network level")
STAGE_FLAG = Flag("stage", "", "network stages (not to be confused with phase), separated "
                               "by ','")
ITERATIONS_FLAG = Flag("iterations", 50, "the number of iterations to run")


def gpu_ids(flag: str) -> list[int]:
    """-gpu as Caffe parses it: '' none, 'all' every device, else a list."""
    if flag == "all":
        return list(range(torch.cuda.device_count()))
    if not flag:
        return []
    try:
        ids = [int(part) for part in flag.split(",")]
    except ValueError:
        raise UsageError(f"-gpu takes device ids separated by ',' or 'all', got '{flag}'") \
            from None
    available = torch.cuda.device_count()
    for device in ids:
        if not 0 <= device < available:
            raise CaffeError(f"-gpu {flag}: there is no CUDA device {device} ("
                             f"{available} device(s) visible to torch)")
    return ids


def stages(flag: str) -> list[str]:
    # boost::split of "" yields one empty stage, which Caffe adds too.
    return flag.split(",")


def device_for(ids: list[int]) -> torch.device:
    if ids:
        logger.info("Use GPU with device ID %d", ids[0])
        logger.info("GPU device name: %s", torch.cuda.get_device_name(ids[0]))
        return torch.device("cuda", ids[0])
    logger.info("Use CPU.")
    return torch.device("cpu")


# -- train ------------------------------------------------------------------
@action("train", "train or finetune a model",
        "-solver solver.prototxt [-weights a.caffemodel[,b.caffemodel] | -snapshot "
        "x.solverstate] [flags]",
        flags=[
            Flag("solver", "", "the solver definition protocol buffer text file"),
            Flag("weights", "", "the pretrained weights to initialize finetuning, separated "
                                "by ','; cannot be set simultaneously with snapshot"),
            Flag("snapshot", "", "the snapshot solver state to resume training"),
            GPU_FLAG, LEVEL_FLAG, STAGE_FLAG,
            Flag("sigint_effect", "stop", "action to take when a SIGINT signal is received: "
                                          "snapshot, stop or none"),
            Flag("sighup_effect", "snapshot", "action to take when a SIGHUP signal is "
                                              "received: snapshot, stop or none"),
        ])
def train_action(flags: dict[str, Any], args: list[str]) -> int:
    from caffe_ft.solver import SignalHandler, Solver
    from caffe_ft.solver.launch import spawn_ranks
    from caffe_ft.solver.parallel import DataParallel, join_process_group, launched_world_size
    from caffe_ft.solver.signals import action_from_flag
    from caffe_ft.upgrade import read_solver_text
    if not flags["solver"]:
        raise UsageError("Need a solver definition to train.")
    if flags["snapshot"] and flags["weights"]:
        raise UsageError("Give a snapshot to resume training or weights to finetune but not "
                         "both.")
    setup_logging()
    param = read_solver_text(flags["solver"])
    # -level and -stage describe the train net only; test nets keep test_state.
    param.train_state.level = flags["level"]
    param.train_state.stage.extend(stages(flags["stage"]))
    gpu = flags["gpu"]
    if not gpu and param.HasField("solver_mode") and \
            param.solver_mode == caffe_pb2.SolverParameter.GPU:
        if torch.cuda.is_available():
            gpu = str(param.device_id)
        else:
            logger.warning("The solver asks for solver_mode: GPU but torch sees no CUDA "
                           "device; training on the CPU")
    ids = gpu_ids(gpu)
    world_size = launched_world_size()
    if len(ids) > 1 and world_size == 1:
        # One process per GPU, each re-running this command as one rank.
        return spawn_ranks(["train", *flag_arguments({**flags, "gpu": gpu})], len(ids))
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
    if ids:
        logger.info("Using GPUs %s", ", ".join(str(i) for i in ids))
        for i in ids:
            logger.info("GPU %d: %s", i, torch.cuda.get_device_name(i))
        param.device_id = device.index
    else:
        logger.info("Use CPU.")
    handler = SignalHandler(action_from_flag(flags["sigint_effect"]),
                            action_from_flag(flags["sighup_effect"]))
    if flags["snapshot"] or flags["weights"]:
        # The flags replace the solver's own `weights`.
        del param.weights[:]
        if flags["weights"]:
            param.weights.append(flags["weights"])
    with handler:
        solver = Solver(param, flags["solver"], device, handler.check, rank)
        if flags["snapshot"]:
            logger.info("Resuming from %s", flags["snapshot"])
            solver.restore(flags["snapshot"])
        logger.info("Starting Optimization")
        if world_size > 1:
            DataParallel(solver).train()
        else:
            solver.solve()
    logger.info("Optimization Done.")
    return 0


# -- test -------------------------------------------------------------------
@action("test", "score a model",
        "-model net.prototxt -weights x.caffemodel [-iterations 50] [flags]",
        flags=[
            Flag("model", "", "the model definition protocol buffer text file"),
            Flag("weights", "", "the trained weights (one file; commas are part of the name)"),
            ITERATIONS_FLAG, GPU_FLAG, LEVEL_FLAG, STAGE_FLAG,
        ])
def test_action(flags: dict[str, Any], args: list[str]) -> int:
    from caffe_ft.net import Net
    from caffe_ft.net.weights import copy_trained_layers_from
    from caffe_ft.upgrade import read_net_text
    if not flags["model"]:
        raise UsageError("Need a model definition to score.")
    if not flags["weights"]:
        raise UsageError("Need model weights to score.")
    setup_logging()
    device = device_for(gpu_ids(flags["gpu"]))
    net = Net(read_net_text(flags["model"]), caffe_pb2.TEST, flags["level"],
              stages(flags["stage"]), source=flags["model"]).to(device)
    copy_trained_layers_from(net, flags["weights"])
    iterations = flags["iterations"]
    logger.info("Running for %d iterations.", iterations)
    scores: np.ndarray | None = None
    names: list[str] = []
    loss = f32(0)
    with torch.no_grad():
        for i in range(iterations):
            loss += f32(net.forward().item())
            values, names = [], []
            for name, blob in net.output_blobs().items():
                for score in blob.detach().reshape(-1).cpu().numpy().astype(np.float32):
                    logger.info("Batch %d, %s = %g", i, name, score)
                    values.append(score)
                    names.append(name)
            batch = np.array(values, dtype=np.float32)
            scores = batch if scores is None else scores + batch
    if iterations:
        loss /= f32(iterations)
    logger.info("Loss: %g", loss)
    weights = dict(net.loss_tops)
    for name, score in zip(names, scores if scores is not None else []):
        mean = score / f32(iterations)
        weight = weights.get(name, 0.0)
        suffix = f" (* {weight:g} = {f32(weight) * mean:g} loss)" if weight else ""
        logger.info("%s = %g%s", name, mean, suffix)
    return 0


# -- time -------------------------------------------------------------------
@action("time", "benchmark model execution time",
        "-model net.prototxt [-iterations 50] [-phase TRAIN|TEST] [flags]",
        flags=[
            Flag("model", "", "the model definition protocol buffer text file"),
            Flag("phase", "", "network phase (TRAIN or TEST); default TRAIN"),
            ITERATIONS_FLAG, GPU_FLAG, LEVEL_FLAG, STAGE_FLAG,
        ])
def time_action(flags: dict[str, Any], args: list[str]) -> int:
    from caffe_ft.cli.timing import time_net
    from caffe_ft.net import Net
    from caffe_ft.upgrade import read_net_text
    if not flags["model"]:
        raise UsageError("Need a model definition to time.")
    phases = {"": caffe_pb2.TRAIN, "TRAIN": caffe_pb2.TRAIN, "TEST": caffe_pb2.TEST}
    if flags["phase"] not in phases:
        raise UsageError('phase must be "TRAIN" or "TEST"')
    setup_logging()
    device = device_for(gpu_ids(flags["gpu"]))
    net = Net(read_net_text(flags["model"]), phases[flags["phase"]], flags["level"],
              stages(flags["stage"]), source=flags["model"]).to(device)
    time_net(net, flags["iterations"], device)
    return 0


# -- device_query -----------------------------------------------------------
@action("device_query", "show GPU diagnostic information", "-gpu 0[,1...]|all",
        flags=[GPU_FLAG])
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
