"""V0 → V1: nets whose `layers {}` wrap an old `layer {}` (V0LayerParameter)
with lower-case type strings and flat fields (upgrade_proto.cpp UpgradeV0Net).

Caffe first folds V0 "padding" layers into the conv/pool layer they feed,
then maps each V0 layer's type and flat fields onto V1's typed *_param
messages. A field the V0 type has no place for is logged and dropped (the
upgrade goes on, reporting it was not fully compatible); an unknown type or
a padding layer that cannot be folded is fatal.
"""
from __future__ import annotations

from caffe_ft.errors import CaffeError
from caffe_ft.glog import logger
from caffe_ft.proto import caffe_pb2

V1 = caffe_pb2.V1LayerParameter

# V0 type string → V1 enum, as UpgradeV0LayerType. "padding" is absent: those
# layers are folded away before types are mapped.
V0_LAYER_TYPES: dict[str, int] = {
    "accuracy": V1.ACCURACY, "bnll": V1.BNLL, "concat": V1.CONCAT, "conv": V1.CONVOLUTION,
    "data": V1.DATA, "dropout": V1.DROPOUT, "euclidean_loss": V1.EUCLIDEAN_LOSS,
    "flatten": V1.FLATTEN, "hdf5_data": V1.HDF5_DATA, "hdf5_output": V1.HDF5_OUTPUT,
    "im2col": V1.IM2COL, "images": V1.IMAGE_DATA, "infogain_loss": V1.INFOGAIN_LOSS,
    "innerproduct": V1.INNER_PRODUCT, "lrn": V1.LRN,
    "multinomial_logistic_loss": V1.MULTINOMIAL_LOGISTIC_LOSS, "pool": V1.POOLING,
    "relu": V1.RELU, "sigmoid": V1.SIGMOID, "softmax": V1.SOFTMAX,
    "softmax_loss": V1.SOFTMAX_LOSS, "split": V1.SPLIT, "tanh": V1.TANH,
    "window_data": V1.WINDOW_DATA,
}

# Transformation fields apply to a V0 layer of any type.
ANY_TYPE = "*"

# V0 field → {V0 type: (V1 sub-message, its field)}, in the order Caffe
# handles them (so problems are logged in Caffe's order). new_num and
# new_channels are absent: Caffe drops them silently.
V0_FIELD_TARGETS: dict[str, dict[str, tuple[str, str]]] = {
    "num_output": {"conv": ("convolution_param", "num_output"),
                   "innerproduct": ("inner_product_param", "num_output")},
    "biasterm": {"conv": ("convolution_param", "bias_term"),
                 "innerproduct": ("inner_product_param", "bias_term")},
    "weight_filler": {"conv": ("convolution_param", "weight_filler"),
                      "innerproduct": ("inner_product_param", "weight_filler")},
    "bias_filler": {"conv": ("convolution_param", "bias_filler"),
                    "innerproduct": ("inner_product_param", "bias_filler")},
    "pad": {"conv": ("convolution_param", "pad"), "pool": ("pooling_param", "pad")},
    "kernelsize": {"conv": ("convolution_param", "kernel_size"),
                   "pool": ("pooling_param", "kernel_size")},
    "group": {"conv": ("convolution_param", "group")},
    "stride": {"conv": ("convolution_param", "stride"), "pool": ("pooling_param", "stride")},
    "pool": {"pool": ("pooling_param", "pool")},
    "dropout_ratio": {"dropout": ("dropout_param", "dropout_ratio")},
    "local_size": {"lrn": ("lrn_param", "local_size")},
    "alpha": {"lrn": ("lrn_param", "alpha")},
    "beta": {"lrn": ("lrn_param", "beta")},
    "k": {"lrn": ("lrn_param", "k")},
    "source": {"data": ("data_param", "source"), "hdf5_data": ("hdf5_data_param", "source"),
               "images": ("image_data_param", "source"),
               "window_data": ("window_data_param", "source"),
               "infogain_loss": ("infogain_loss_param", "source")},
    "scale": {ANY_TYPE: ("transform_param", "scale")},
    "meanfile": {ANY_TYPE: ("transform_param", "mean_file")},
    "batchsize": {"data": ("data_param", "batch_size"),
                  "hdf5_data": ("hdf5_data_param", "batch_size"),
                  "images": ("image_data_param", "batch_size"),
                  "window_data": ("window_data_param", "batch_size")},
    "cropsize": {ANY_TYPE: ("transform_param", "crop_size")},
    "mirror": {ANY_TYPE: ("transform_param", "mirror")},
    "rand_skip": {"data": ("data_param", "rand_skip"),
                  "images": ("image_data_param", "rand_skip")},
    "shuffle_images": {"images": ("image_data_param", "shuffle")},
    "new_height": {"images": ("image_data_param", "new_height")},
    "new_width": {"images": ("image_data_param", "new_width")},
    "concat_dim": {"concat": ("concat_param", "concat_dim")},
    "det_fg_threshold": {"window_data": ("window_data_param", "fg_threshold")},
    "det_bg_threshold": {"window_data": ("window_data_param", "bg_threshold")},
    "det_fg_fraction": {"window_data": ("window_data_param", "fg_fraction")},
    "det_context_pad": {"window_data": ("window_data_param", "context_pad")},
    "det_crop_mode": {"window_data": ("window_data_param", "crop_mode")},
    "hdf5_output_param": {"hdf5_output": ("hdf5_output_param", "")},
}


def net_needs_v0_to_v1_upgrade(net: caffe_pb2.NetParameter) -> bool:
    return any(layer.HasField("layer") for layer in net.layers)


def upgrade_v0_net(net: caffe_pb2.NetParameter, source: str = "<net>") -> bool:
    """Upgrade `net` in place; False if some V0 field had to be dropped.

    Like Caffe, only the name, layers, input, input_dim and force_backward
    survive: the upgraded net is built afresh from those."""
    padded = upgrade_v0_padding_layers(net, source)
    upgraded = caffe_pb2.NetParameter()
    if padded.HasField("name"):
        upgraded.name = padded.name
    fully_compatible = True
    for layer in padded.layers:
        fully_compatible &= upgrade_v0_layer(layer, upgraded.layers.add(), source)
    upgraded.input.extend(padded.input)
    upgraded.input_dim.extend(padded.input_dim)
    if padded.HasField("force_backward"):
        upgraded.force_backward = padded.force_backward
    net.CopyFrom(upgraded)
    return fully_compatible


def upgrade_v0_padding_layers(net: caffe_pb2.NetParameter,
                              source: str = "<net>") -> caffe_pb2.NetParameter:
    """A copy of `net` without V0 "padding" layers: each one's `pad` moves
    into the conv or pool layer that reads its output, which then reads the
    padding layer's input instead."""
    result = caffe_pb2.NetParameter()
    result.CopyFrom(net)
    del result.layers[:]
    # Which layer last wrote each blob; -1 marks a net input.
    last_writer = {name: -1 for name in net.input}
    for index, connection in enumerate(net.layers):
        v0 = connection.layer
        if v0.type != "padding":
            result.layers.add().CopyFrom(connection)
        for slot, blob in enumerate(connection.bottom):
            if blob not in last_writer:
                raise CaffeError(f"{source}: layer '{_name(connection)}' reads blob '{blob}', "
                                 f"which no earlier layer or net input produces")
            writer = last_writer[blob]
            if writer == -1 or net.layers[writer].layer.type != "padding":
                continue
            pad_layer = net.layers[writer]
            _check_foldable(pad_layer, connection, source)
            consumer = result.layers[-1]
            consumer.layer.pad = pad_layer.layer.pad
            consumer.bottom[slot] = pad_layer.bottom[0]
        for blob in connection.top:
            last_writer[blob] = index
    return result


def _check_foldable(pad_layer: caffe_pb2.V1LayerParameter,
                    consumer: caffe_pb2.V1LayerParameter, source: str) -> None:
    where = f"{source}: padding layer '{_name(pad_layer)}' feeds layer '{_name(consumer)}'"
    if consumer.layer.type not in ("conv", "pool"):
        raise CaffeError(f"{where} of V0 type '{consumer.layer.type}'; a padding layer can "
                         f"only feed a 'conv' or 'pool' layer")
    if len(consumer.bottom) != 1:
        raise CaffeError(f"{where}, which has {len(consumer.bottom)} bottoms; expected 1")
    if len(pad_layer.bottom) != 1 or len(pad_layer.top) != 1:
        raise CaffeError(f"{where}; a padding layer needs exactly 1 bottom and 1 top, it has "
                         f"{len(pad_layer.bottom)} and {len(pad_layer.top)}")


def upgrade_v0_layer(connection: caffe_pb2.V1LayerParameter, out: caffe_pb2.V1LayerParameter,
                     source: str = "<net>") -> bool:
    """Fill V1 `out` from the V0 layer in `connection`; False if a field was
    dropped. Only bottom and top of `connection` itself are kept, as Caffe."""
    out.Clear()
    out.bottom.extend(connection.bottom)
    out.top.extend(connection.top)
    if not connection.HasField("layer"):
        return True
    v0 = connection.layer
    if v0.HasField("name"):
        out.name = v0.name
    if v0.HasField("type"):
        if v0.type not in V0_LAYER_TYPES:
            raise CaffeError(f"{source}: layer '{v0.name}': unknown V0 layer type '{v0.type}'; "
                             f"expected one of {', '.join(sorted(V0_LAYER_TYPES))}")
        out.type = V0_LAYER_TYPES[v0.type]
    out.blobs.extend(v0.blobs)
    out.blobs_lr.extend(v0.blobs_lr)
    out.weight_decay.extend(v0.weight_decay)
    fully_compatible = True
    for field, targets in V0_FIELD_TARGETS.items():
        if not v0.HasField(field):
            continue
        target = targets.get(ANY_TYPE) or targets.get(v0.type)
        if target is None:
            logger.error("Unknown parameter %s for layer type %s", field, v0.type)
            fully_compatible = False
            continue
        _set_target(out, target, v0, field)
    return fully_compatible


def _set_target(out: caffe_pb2.V1LayerParameter, target: tuple[str, str],
                v0: caffe_pb2.V0LayerParameter, field: str) -> None:
    message_name, target_field = target
    message = getattr(out, message_name)
    value = getattr(v0, field)
    if not target_field:
        message.CopyFrom(value)
    elif field == "pool":
        # The two PoolMethod enums share names but are distinct types.
        name = caffe_pb2.V0LayerParameter.PoolMethod.Name(value)
        message.pool = caffe_pb2.PoolingParameter.PoolMethod.Value(name)
    else:
        descriptor = message.DESCRIPTOR.fields_by_name[target_field]
        if descriptor.type == descriptor.TYPE_MESSAGE:
            getattr(message, target_field).CopyFrom(value)
        elif descriptor.is_repeated:
            getattr(message, target_field).append(value)
        else:
            setattr(message, target_field, value)


def _name(connection: caffe_pb2.V1LayerParameter) -> str:
    return connection.layer.name or connection.name or "<unnamed>"
