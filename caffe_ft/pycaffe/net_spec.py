"""pycaffe's net specification: `caffe.NetSpec`, `caffe.layers` (L),
`caffe.params` (P) and `caffe.to_proto`.

A script writes a net as calls, `conv = L.Convolution(data, kernel_size=3,
num_output=8)`: each call is a Function (one layer) whose outputs are Tops.
`to_proto` turns the graph into a NetParameter. What the script did not name
gets pycaffe's automatic name, the layer type and a count per type
(`Convolution1`), handed out in pycaffe's order (a layer after its inputs,
inputs depth first in order; a layer's tops before the layer), so the
prototxt is the text real pycaffe writes.
"""
from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Any, Union

from google.protobuf.message import Message

from caffe_ft.errors import CaffeError
from caffe_ft.proto import caffe_pb2


class NotATop(CaffeError, TypeError):
    """A layer input that is not a Top (a TypeError, as pycaffe raises)."""


class UnknownField(CaffeError, AttributeError):
    """A keyword or constant caffe.proto does not define (an AttributeError,
    as pycaffe raises)."""


class UnknownTop(CaffeError, KeyError):
    """A NetSpec name that was never assigned (a KeyError, as pycaffe raises)."""


def param_name_dict() -> dict[str, str]:
    """Layer type → the prefix of its `<prefix>_param` field, read from the
    parameter message's name as pycaffe does (ConvolutionParameter →
    convolution_param, TransformationParameter → transform_param)."""
    names = {}
    for field in caffe_pb2.LayerParameter.DESCRIPTOR.fields:
        if field.name.endswith("_param"):
            type_name = field.message_type.name.removesuffix("Parameter")
            names[type_name] = field.name.removesuffix("_param")
    return names


_PARAM_NAMES = param_name_dict()


def assign_proto(proto: Message, name: str, val: Any) -> None:
    """Set field `name` of `proto` from a Python value by pycaffe's rules: a
    dict fills a message, a list fills a repeated field (with messages when
    its first item is a dict), one value for a repeated field is a list of
    one, anything else is assigned as is."""
    field = proto.DESCRIPTOR.fields_by_name.get(name)
    if field is None:
        raise UnknownField(f"{proto.DESCRIPTOR.name} has no field '{name}'")
    if field.is_repeated and not isinstance(val, list):
        val = [val]
    if isinstance(val, list):
        container = getattr(proto, name)
        if val and isinstance(val[0], dict):
            for item in val:
                _assign_dict(container.add(), item)
        else:
            container.extend(val)
    elif isinstance(val, dict):
        _assign_dict(getattr(proto, name), val)
    else:
        setattr(proto, name, val)


def _assign_dict(proto: Message, values: dict[str, Any]) -> None:
    for key, value in values.items():
        assign_proto(proto, key, value)


class Top:
    """One output blob of a Function (top `n` of its layer)."""

    def __init__(self, fn: Function, n: int) -> None:
        self.fn = fn
        self.n = n

    def to_proto(self) -> caffe_pb2.NetParameter:
        """The layers this top needs, automatically named."""
        return to_proto(self)


class Function:
    """A layer: its type, its inputs (Tops of other layers) and its keyword
    parameters, less `ntop` (how many tops) and `in_place` (tops are the
    bottoms), which shape the layer rather than fill its message."""

    def __init__(self, type_name: str, inputs: tuple[Any, ...], params: dict[str, Any]) -> None:
        for index, bottom in enumerate(inputs):
            if not isinstance(bottom, Top):
                raise NotATop(f"{type_name} input {index} is not a Top (type is {type(bottom)})")
        self.type_name = type_name
        self.inputs: tuple[Top, ...] = inputs
        self.ntop: int = params.pop("ntop", 1)
        self.in_place: bool = params.pop("in_place", False)
        self.params = params
        self.tops = tuple(Top(self, n) for n in range(self.ntop))

    def _layer(self, layers: dict[Function, caffe_pb2.LayerParameter], names: dict[Any, str],
               autonames: Counter[str]) -> caffe_pb2.LayerParameter:
        layer = caffe_pb2.LayerParameter()
        layer.type = self.type_name
        layer.bottom.extend(layers[bottom.fn].top[bottom.n] for bottom in self.inputs)
        if self.in_place:
            layer.top.extend(layer.bottom)
        else:
            layer.top.extend(_top_name(top, names, autonames) for top in self.tops)
        layer.name = self._name(names, autonames)
        for key, value in self.params.items():
            self._assign(layer, key, value)
        return layer

    def _name(self, names: dict[Any, str], autonames: Counter[str]) -> str:
        # A layer is named for its first top (an in-place layer too, though its
        # top is its bottom's blob); a layer without tops gets a name of its own.
        if self not in names:
            names[self] = (_top_name(self.tops[0], names, autonames) if self.ntop > 0
                           else _autoname(self.type_name, autonames))
        return names[self]

    def _assign(self, layer: caffe_pb2.LayerParameter, key: str, value: Any) -> None:
        # A key ending in "param" (param, transform_param, convolution_param)
        # is the layer's own field. Any other key belongs to the type's
        # *_param message, or, when that has no such field, to the layer
        # (name, loss_weight, include, ...).
        prefix = _PARAM_NAMES.get(self.type_name)
        if not key.endswith("param") and prefix is not None:
            try:
                assign_proto(getattr(layer, prefix + "_param"), key, value)
                return
            except AttributeError:
                pass
        try:
            assign_proto(layer, key, value)
        except AttributeError as err:
            where = f"{prefix}_param nor of the layer" if prefix else "the layer"
            raise UnknownField(f"{self.type_name} layer '{layer.name}': keyword '{key}' is no "
                               f"field of {where}: {err}") from err


def _autoname(type_name: str, autonames: Counter[str]) -> str:
    autonames[type_name] += 1
    return type_name + str(autonames[type_name])


def _top_name(top: Top, names: dict[Any, str], autonames: Counter[str]) -> str:
    if top not in names:
        names[top] = _autoname(top.fn.type_name, autonames)
    return names[top]


def _add_layers(root: Function, layers: dict[Function, caffe_pb2.LayerParameter],
                names: dict[Any, str], autonames: Counter[str]) -> None:
    """Add `root`'s layer and those it needs to `layers`, each after its
    inputs' (depth first, inputs in order: pycaffe's order). A stack rather
    than recursion, so a net deeper than Python's recursion limit builds."""
    stack = [(root, False)]
    while stack:
        fn, inputs_added = stack.pop()
        if fn in layers:
            continue
        if inputs_added:
            layers[fn] = fn._layer(layers, names, autonames)
        else:
            stack.append((fn, True))
            stack.extend((bottom.fn, False) for bottom in reversed(fn.inputs))


def _net(layers: dict[Function, caffe_pb2.LayerParameter]) -> caffe_pb2.NetParameter:
    net = caffe_pb2.NetParameter()
    net.layer.extend(layers.values())
    return net


def to_proto(*tops: Top) -> caffe_pb2.NetParameter:
    """A NetParameter with every layer needed to compute `tops`, automatically named."""
    layers: dict[Function, caffe_pb2.LayerParameter] = OrderedDict()
    names: dict[Any, str] = {}
    autonames: Counter[str] = Counter()
    for index, top in enumerate(tops):
        if not isinstance(top, Top):
            raise NotATop(f"to_proto argument {index} is not a Top (type is {type(top)})")
        _add_layers(top.fn, layers, names, autonames)
    return _net(layers)


class NetSpec:
    """Tops assigned as attributes (`n.conv1 = L.Convolution(...)`) or items;
    `to_proto` names each by its attribute, and its layer too."""

    def __init__(self) -> None:
        super().__setattr__("tops", OrderedDict())

    def __setattr__(self, name: str, value: Union[Top, Function]) -> None:
        self.tops[name] = value

    def __getattr__(self, name: str) -> Union[Top, Function]:
        # Python's own protocols (copy, pickle) probe dunders: they must see
        # an AttributeError, not a missing top.
        if name.startswith("__"):
            raise AttributeError(name)
        if name not in self.tops:
            raise UnknownTop(f"NetSpec has no top '{name}'")
        return self.tops[name]

    def __setitem__(self, key: str, value: Union[Top, Function]) -> None:
        self.__setattr__(key, value)

    def __getitem__(self, item: str) -> Union[Top, Function]:
        return self.__getattr__(item)

    def to_proto(self) -> caffe_pb2.NetParameter:
        """A NetParameter with every layer the assigned tops need."""
        roots = [self._function(name, value) for name, value in self.tops.items()]
        names: dict[Any, str] = {value: name for name, value in self.tops.items()}
        layers: dict[Function, caffe_pb2.LayerParameter] = OrderedDict()
        autonames: Counter[str] = Counter()
        for root in roots:
            _add_layers(root, layers, names, autonames)
        return _net(layers)

    @staticmethod
    def _function(name: str, value: Any) -> Function:
        if isinstance(value, Top):
            return value.fn
        if isinstance(value, Function):  # a layer without tops (ntop=0)
            return value
        raise NotATop(f"NetSpec attribute '{name}' is not a Top nor a top-less layer (type is "
                      f"{type(value)}); give each top of a multi-top layer its own name")


class Layers:
    """`caffe.layers`: `L.<Type>(*bottoms, **params)` makes a layer of that
    type and returns its Top, its tuple of Tops (ntop > 1), or the layer
    itself when it has none (ntop=0)."""

    def __getattr__(self, type_name: str) -> Callable[..., Any]:
        if type_name.startswith("__"):
            raise AttributeError(type_name)

        def layer_fn(*args: Any, **kwargs: Any) -> Union[Top, tuple[Top, ...], Function]:
            fn = Function(type_name, args, kwargs)
            if fn.ntop == 0:
                return fn
            return fn.tops[0] if fn.ntop == 1 else fn.tops
        return layer_fn


class Parameters:
    """`caffe.params`: `P.<Type>.<CONSTANT>` is the enum value of caffe.proto's
    <Type>Parameter (P.Pooling.MAX)."""

    def __getattr__(self, type_name: str) -> _Constants:
        if type_name.startswith("__"):
            raise AttributeError(type_name)
        return _Constants(type_name + "Parameter")


class _Constants:
    def __init__(self, message: str) -> None:
        self._message = message

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        message = getattr(caffe_pb2, self._message, None)
        if message is None or not hasattr(message, name):
            raise UnknownField(f"caffe.proto has no {self._message}.{name}")
        return getattr(message, name)


layers = Layers()
params = Parameters()
