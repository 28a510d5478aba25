"""caffe_ft: Caffe-compatible fine-tuning on PyTorch.

`import caffe_ft as caffe` gives pycaffe's API: caffe.Net, caffe.TRAIN/TEST,
caffe.set_mode_cpu/gpu, caffe.io, caffe.Layer for Python layers.
"""
from caffe_ft import io
from caffe_ft.layers.python_layer import PythonLayerBase as Layer
from caffe_ft.pycaffe import (
    TEST,
    TRAIN,
    Net,
    set_device,
    set_mode_cpu,
    set_mode_gpu,
    set_random_seed,
)

__version__ = "0.1.0"
__all__ = ["Layer", "Net", "TRAIN", "TEST", "io", "set_device", "set_mode_cpu", "set_mode_gpu",
           "set_random_seed", "__version__"]
