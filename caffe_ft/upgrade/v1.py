"""V1 nets (`layers {}` with enum types): the data-transformation upgrade and
V1 → V2 (upgrade_proto.cpp UpgradeNetDataTransformation, UpgradeV1Net)."""
from __future__ import annotations

from caffe_ft.errors import CaffeError
from caffe_ft.glog import logger
from caffe_ft.proto import caffe_pb2

V1 = caffe_pb2.V1LayerParameter

# V1 enum name → V2 type string, as UpgradeV1LayerType.
V1_LAYER_TYPES: dict[str, str] = {
    "NONE": "", "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL",
    "CONCAT": "Concat", "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution",
    "DECONVOLUTION": "Deconvolution", "DATA": "Data", "DROPOUT": "Dropout",
    "DUMMY_DATA": "DummyData", "EUCLIDEAN_LOSS": "EuclideanLoss", "ELTWISE": "Eltwise",
    "EXP": "Exp", "FLATTEN": "Flatten", "HDF5_DATA": "HDF5Data", "HDF5_OUTPUT": "HDF5Output",
    "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col", "IMAGE_DATA": "ImageData",
    "INFOGAIN_LOSS": "InfogainLoss", "INNER_PRODUCT": "InnerProduct", "LRN": "LRN",
    "MEMORY_DATA": "MemoryData", "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN", "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence",
    "SOFTMAX": "Softmax", "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split", "SLICE": "Slice",
    "TANH": "TanH", "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold",
}

# V1 data layer type → the sub-message that once held transformation fields.
_DATA_LAYER_PARAMS = {V1.DATA: "data_param", V1.IMAGE_DATA: "image_data_param",
                      V1.WINDOW_DATA: "window_data_param"}
# The old field names are the TransformationParameter's names too.
_TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")

# Every *_param of V1LayerParameter has a same-named field in LayerParameter,
# and UpgradeV1LayerParameter copies each one verbatim.
_V1_SUB_PARAMS = tuple(f.name for f in V1.DESCRIPTOR.fields if f.name.endswith("_param"))


def net_needs_data_upgrade(net: caffe_pb2.NetParameter) -> bool:
    """A V1 data layer keeps scale/mean_file/crop_size/mirror in its own
    param. (A V2 `layer` is never checked, as in Caffe.)"""
    for layer in net.layers:
        param_name = _DATA_LAYER_PARAMS.get(layer.type)
        if param_name is not None and any(
                getattr(layer, param_name).HasField(f) for f in _TRANSFORM_FIELDS):
            return True
    return False


def upgrade_net_data_transformation(net: caffe_pb2.NetParameter) -> None:
    """Move the transformation fields of V1 data layers into transform_param."""
    for layer in net.layers:
        param_name = _DATA_LAYER_PARAMS.get(layer.type)
        if param_name is None:
            continue
        param = getattr(layer, param_name)
        # Caffe takes mutable pointers to both messages for every data layer
        # of these types, which marks them present even when nothing moves;
        # the upgraded file then shows an empty `transform_param {}`.
        param.SetInParent()
        layer.transform_param.SetInParent()
        for field in _TRANSFORM_FIELDS:
            if param.HasField(field):
                setattr(layer.transform_param, field, getattr(param, field))
                param.ClearField(field)


def net_needs_v1_to_v2_upgrade(net: caffe_pb2.NetParameter) -> bool:
    return len(net.layers) > 0


def upgrade_v1_net(net: caffe_pb2.NetParameter, source: str = "<net>") -> bool:
    """Replace `layers` by V2 `layer`s in place; False if a layer still held a
    V0 `layer` (ignored, as Caffe does)."""
    if len(net.layer) > 0:
        raise CaffeError(
            f"{source}: refusing to upgrade a net that has both 'layer' ({len(net.layer)}) and "
            f"'layers' ({len(net.layers)}) entries; the current format uses "
            f"layer {{ type: 'Layer' ... }}, not layers {{ type: LAYER ... }}. Switch the "
            f"definition to 'layer' by hand")
    v1_layers = list(net.layers)
    upgraded = [caffe_pb2.LayerParameter() for _ in v1_layers]
    fully_compatible = True
    for index, (v1, layer) in enumerate(zip(v1_layers, upgraded)):
        if not upgrade_v1_layer(v1, layer):
            logger.error("Upgrade of input layer %d failed.", index)
            fully_compatible = False
    del net.layers[:]
    net.layer.extend(upgraded)
    return fully_compatible


def upgrade_v1_layer(v1: caffe_pb2.V1LayerParameter, layer: caffe_pb2.LayerParameter) -> bool:
    """Fill V2 `layer` from `v1`; False if `v1` still holds a V0 layer."""
    layer.Clear()
    layer.bottom.extend(v1.bottom)
    layer.top.extend(v1.top)
    if v1.HasField("name"):
        layer.name = v1.name
    layer.include.extend(v1.include)
    layer.exclude.extend(v1.exclude)
    if v1.HasField("type"):
        layer.type = V1_LAYER_TYPES[V1.LayerType.Name(v1.type)]
    layer.blobs.extend(v1.blobs)
    # Four parallel lists become one ParamSpec per index; a spec exists as
    # soon as any list reaches its index.
    for i, name in enumerate(v1.param):
        _spec(layer, i).name = name
    for i, mode in enumerate(v1.blob_share_mode):
        _spec(layer, i).share_mode = caffe_pb2.ParamSpec.DimCheckMode.Value(
            V1.DimCheckMode.Name(mode))
    for i, lr in enumerate(v1.blobs_lr):
        _spec(layer, i).lr_mult = lr
    for i, decay in enumerate(v1.weight_decay):
        _spec(layer, i).decay_mult = decay
    layer.loss_weight.extend(v1.loss_weight)
    for name in _V1_SUB_PARAMS:
        if v1.HasField(name):
            getattr(layer, name).CopyFrom(getattr(v1, name))
    if v1.HasField("layer"):
        logger.error("Input NetParameter has V0 layer -- ignoring.")
        return False
    return True


def _spec(layer: caffe_pb2.LayerParameter, index: int) -> caffe_pb2.ParamSpec:
    while len(layer.param) <= index:
        layer.param.add()
    return layer.param[index]
