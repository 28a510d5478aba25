"""`caffe_ft time`: per-layer forward and backward times in the words of
Caffe's time tool.

Caffe calls each layer's Backward on its own; with autograd one backward
pass runs the whole graph. So each timed forward feeds a layer detached
copies of its bottoms, which gives every layer a graph of its own whose
backward can be timed alone, with the diffs Caffe would seed (1 for outputs,
the loss weight for losses).
"""
from __future__ import annotations

import time

import torch

from caffe_ft.log import logger
from caffe_ft.net import Net


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _forward_layers(net: Net, device: torch.device, forward_ms: list[float]) -> list[list]:
    """One forward pass, layer by layer; returns each layer's tops."""
    values: dict[str, torch.Tensor] = {}
    tops_of: list[list] = []
    for i, layer in enumerate(net.layers):
        bottoms = []
        for name, detach in zip(net.bottom_names[i], net.bottom_detach[i]):
            value = values[name]
            copy = value.detach()
            if value.requires_grad and not detach:
                copy.requires_grad_()
            bottoms.append(copy)
        start = _now(device)
        tops = layer(*bottoms)
        forward_ms[i] += (_now(device) - start) * 1000
        for name, top in zip(net.top_names[i], tops):
            values[name] = top
        tops_of.append(list(tops))
    return tops_of


def _backward_layers(net: Net, tops_of: list[list], device: torch.device,
                     backward_ms: list[float]) -> None:
    weights = dict(net.loss_tops)
    for i in reversed(range(len(net.layers))):
        tensors, grads = [], []
        for name, top in zip(net.top_names[i], tops_of[i]):
            if top.requires_grad:
                tensors.append(top)
                grads.append(torch.full_like(top, weights.get(name, 1.0)))
        start = _now(device)
        if tensors:
            torch.autograd.backward(tensors, grads)
        backward_ms[i] += (_now(device) - start) * 1000


def time_net(net: Net, iterations: int, device: torch.device) -> None:
    logger.info("Performing Forward")
    loss = net.forward()
    logger.info("Initial loss: %g", loss.item())
    logger.info("Performing Backward")
    net.backward()
    count = len(net.layers)
    # The layer-by-layer graphs pay one-time costs of their own on their
    # first pass (a 20× slower first iteration); keep them out of the times.
    _backward_layers(net, _forward_layers(net, device, [0.0] * count), device, [0.0] * count)
    forward_ms = [0.0] * count
    backward_ms = [0.0] * count
    forward_total = backward_total = 0.0
    logger.info("*** Benchmark begins ***")
    logger.info("Testing for %d iterations.", iterations)
    total_start = _now(device)
    for j in range(iterations):
        iteration_start = _now(device)
        tops_of = _forward_layers(net, device, forward_ms)
        backward_start = _now(device)
        forward_total += (backward_start - iteration_start) * 1000
        _backward_layers(net, tops_of, device, backward_ms)
        end = _now(device)
        backward_total += (end - backward_start) * 1000
        logger.info("Iteration: %d forward-backward time: %g ms.", j + 1,
                    (end - iteration_start) * 1000)
    total = (_now(device) - total_start) * 1000
    runs = max(iterations, 1)
    logger.info("Average time per layer: ")
    for i, name in enumerate(net.layer_names):
        logger.info("%10s\tforward: %g ms.", name, forward_ms[i] / runs)
        logger.info("%10s\tbackward: %g ms.", name, backward_ms[i] / runs)
    logger.info("Average Forward pass: %g ms.", forward_total / runs)
    logger.info("Average Backward pass: %g ms.", backward_total / runs)
    logger.info("Average Forward-Backward: %g ms.", total / runs)
    logger.info("Total Time: %g ms.", total)
    logger.info("*** Benchmark ends ***")
