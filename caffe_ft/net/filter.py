"""Caffe's FilterNet: keep the layers whose include/exclude rules the NetState meets."""
from __future__ import annotations

from caffe_ft.errors import CaffeError
from caffe_ft.proto import caffe_pb2


def state_meets_rule(state: caffe_pb2.NetState, rule: caffe_pb2.NetStateRule) -> bool:
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    stages = set(state.stage)
    if any(stage not in stages for stage in rule.stage):
        return False
    return not any(stage in stages for stage in rule.not_stage)


def filter_net(net: caffe_pb2.NetParameter, state: caffe_pb2.NetState,
               source: str = "<net>") -> caffe_pb2.NetParameter:
    """A copy of `net` holding only the layers included in `state`."""
    kept = caffe_pb2.NetParameter()
    kept.CopyFrom(net)
    del kept.layer[:]
    for layer in net.layer:
        if layer.include and layer.exclude:
            raise CaffeError(f"{source}: layer '{layer.name}' specifies both include and "
                             f"exclude rules; use one or the other")
        if layer.include:
            included = any(state_meets_rule(state, rule) for rule in layer.include)
        else:
            included = not any(state_meets_rule(state, rule) for rule in layer.exclude)
        if included:
            kept.layer.add().CopyFrom(layer)
    return kept
