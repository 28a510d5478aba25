"""Imports every layer family module so their types are registered.
Adding a family means adding its import here."""
from caffe_ft.layers import (  # noqa: F401
    activation,
    common,
    data,
    input,
    loss,
    normalization,
    python_layer,
    recurrent,
    vision,
)
