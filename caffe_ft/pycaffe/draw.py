"""pycaffe's caffe.draw: a NetParameter as a Graphviz graph, node for node,
edge for edge and label for label as BVLC's python/caffe/draw.py draws it
(python/draw_net.py's pictures). Layers are boxes, blobs octagons, edges
run bottom → layer → top.

Drawing needs pydot and Graphviz's `dot`, an optional extra
(pip install 'caffe_ft[draw]'); the labels and colours need neither.
"""
from __future__ import annotations

import errno
from types import ModuleType
from typing import Any

from caffe_ft.errors import CaffeError
from caffe_ft.optional import optional_module
from caffe_ft.proto import caffe_pb2
from caffe_ft.protofile import atomic_write

LAYER_STYLE_DEFAULT = {"shape": "record", "fillcolor": "#6495ED", "style": "filled"}
NEURON_LAYER_STYLE = {"shape": "record", "fillcolor": "#90EE90", "style": "filled"}
BLOB_STYLE = {"shape": "octagon", "fillcolor": "#E0E0E0", "style": "filled"}
# Layer types with a learning rate multiplier, and spatial layers.
LEARNING_TYPES = ("Convolution", "Deconvolution", "InnerProduct")
SPATIAL_TYPES = ("Convolution", "Deconvolution", "Pooling")


def pydot_module() -> ModuleType:
    return optional_module("pydot")


def get_pooling_types_dict() -> dict[int, str]:
    """PoolingParameter's PoolMethod number → name (0 → 'MAX', ...)."""
    methods = caffe_pb2.PoolingParameter.PoolMethod.DESCRIPTOR
    return {value.number: name for name, value in methods.values_by_name.items()}


def get_edge_label(layer: caffe_pb2.LayerParameter) -> str:
    """The label of a layer's edges to its tops: the batch of a Data layer,
    the outputs of a Convolution, Deconvolution or InnerProduct, else empty."""
    if layer.type == "Data":
        return f"Batch {layer.data_param.batch_size}"
    if layer.type in ("Convolution", "Deconvolution"):
        return str(layer.convolution_param.num_output)
    if layer.type == "InnerProduct":
        return str(layer.inner_product_param.num_output)
    return '""'


def get_layer_lr_mult(layer: caffe_pb2.LayerParameter) -> tuple[float, float]:
    """The weights' and biases' lr_mult of a Convolution, Deconvolution or
    InnerProduct layer (1.0 where no param spec gives one)."""
    if layer.type not in LEARNING_TYPES:
        raise CaffeError(f"layer '{layer.name}': {layer.type} layers do not have a learning "
                         f"rate multiplier")
    if len(layer.param) > 2:
        raise CaffeError(f"layer '{layer.name}': could not parse the learning rate multiplier "
                         f"of {len(layer.param)} param specs")
    mults = [spec.lr_mult for spec in layer.param] + [1.0, 1.0]
    return mults[0], mults[1]


def get_layer_label(layer: caffe_pb2.LayerParameter, rankdir: str,
                    display_lrm: bool = False) -> str:
    """A layer node's label, quoted: its name, (type), the kernel, stride and
    pad of a spatial layer, and with display_lrm its non-zero lr_mults."""
    # Vertical graphs have room across, horizontal ones room down.
    separator = " " if rankdir in ("TB", "BT") else r"\n"
    if layer.type == "Pooling":
        method = get_pooling_types_dict()[layer.pooling_param.pool]
        descriptors = [layer.name, f"({layer.type} {method})"]
    else:
        descriptors = [layer.name, f"({layer.type})"]
    if layer.type in SPATIAL_TYPES:
        if layer.type == "Pooling":
            pool = layer.pooling_param
            kernel, stride, pad = pool.kernel_size, pool.stride, pool.pad
        else:
            conv = layer.convolution_param
            # The first of each repeated size stands for all (1, 1 and 0 if none).
            kernel = conv.kernel_size[0] if len(conv.kernel_size) else 1
            stride = conv.stride[0] if len(conv.stride) else 1
            pad = conv.pad[0] if len(conv.pad) else 0
        descriptors.append(separator.join([f"kernel size: {kernel}", f"stride: {stride}",
                                           f"pad: {pad}"]))
    if display_lrm and layer.type in LEARNING_TYPES:
        weights_mult, bias_mult = get_layer_lr_mult(layer)
        if weights_mult or bias_mult:
            descriptors.append(f"lr mult: {weights_mult:.1f}, {bias_mult:.1f}")
    # Quoted, or Graphviz reads the colons as ports.
    return '"' + separator.join(descriptors) + '"'


def choose_color_by_layertype(layertype: str) -> str:
    """A layer node's fill colour."""
    colors = {"Convolution": "#FF5050", "Deconvolution": "#FF5050", "Pooling": "#FF9900",
              "InnerProduct": "#CC33FF"}
    return colors.get(layertype, LAYER_STYLE_DEFAULT["fillcolor"])


def in_phase(layer: caffe_pb2.LayerParameter, phase: int) -> bool:
    """draw.py's own phase filter: a rule's phase is compared even where it
    is unset (so reads TRAIN), and stages and levels are ignored."""
    if len(layer.include) and len(layer.exclude):
        raise CaffeError(f"layer '{layer.name}' has both include and exclude specified.")
    included = not len(layer.include) or any(rule.phase == phase for rule in layer.include)
    return included and not any(rule.phase == phase for rule in layer.exclude)


def get_pydot_graph(caffe_net: caffe_pb2.NetParameter, rankdir: str, label_edges: bool = True,
                    phase: int | None = None, display_lrm: bool = False) -> Any:
    """The net as a pydot.Dot: a node per layer (of `phase`, or all) and per
    blob, an edge from each bottom to its layer and from the layer to each top."""
    pydot = pydot_module()
    graph = pydot.Dot(caffe_net.name or "Net", graph_type="digraph", rankdir=rankdir)
    # Keyed by layer name + type and blob name + '_blob': a blob's node is
    # replaced at each mention but keeps its first place in the dot text.
    nodes: dict[str, Any] = {}
    edges: list[tuple[str, str, str]] = []
    for layer in caffe_net.layer:
        if phase is not None and not in_phase(layer, phase):
            continue
        label = get_layer_label(layer, rankdir, display_lrm=display_lrm)
        layer_key = f"{layer.name}_{layer.type}"
        if len(layer.bottom) == 1 and len(layer.top) == 1 and layer.bottom[0] == layer.top[0]:
            nodes[layer_key] = pydot.Node(label, **NEURON_LAYER_STYLE)
        else:
            nodes[layer_key] = pydot.Node(label, **{
                **LAYER_STYLE_DEFAULT, "fillcolor": choose_color_by_layertype(layer.type)})
        for bottom in layer.bottom:
            nodes[bottom + "_blob"] = pydot.Node(bottom, **BLOB_STYLE)
            edges.append((bottom + "_blob", layer_key, '""'))
        top_label = get_edge_label(layer) if label_edges else '""'
        for top in layer.top:
            # As in BVLC's drawings, a blob last seen as a top (a net output,
            # or an in-place layer's last) is a plain node, not an octagon.
            nodes[top + "_blob"] = pydot.Node(top)
            edges.append((layer_key, top + "_blob", top_label))
    for node in nodes.values():
        graph.add_node(node)
    for source, destination, label in edges:
        graph.add_edge(pydot.Edge(nodes[source], nodes[destination], label=label))
    return graph


def draw_net(caffe_net: caffe_pb2.NetParameter, rankdir: str, ext: str = "png",
             phase: int | None = None, display_lrm: bool = False) -> bytes:
    """The net drawn by Graphviz's dot in format `ext` (png, pdf, svg, dot, ...)."""
    graph = get_pydot_graph(caffe_net, rankdir, phase=phase, display_lrm=display_lrm)
    try:
        return graph.create(format=ext)
    except OSError as err:
        if err.errno != errno.ENOENT:
            raise
        raise CaffeError("Drawing a net needs Graphviz's dot program on the PATH "
                         "(e.g. apt-get install graphviz)") from None


def draw_net_to_file(caffe_net: caffe_pb2.NetParameter, filename: str, rankdir: str = "LR",
                     phase: int | None = None, display_lrm: bool = False) -> None:
    """Draw the net into `filename`, in the format its extension names."""
    image = draw_net(caffe_net, rankdir, filename[filename.rfind(".") + 1:], phase, display_lrm)
    with atomic_write(filename) as handle:
        handle.write(image)
