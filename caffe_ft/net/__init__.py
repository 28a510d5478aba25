"""NetParameter → PyTorch graph: filter (NetState rules), plan (split
insertion), build (layers, blobs, params), weights (copy and save)."""
from caffe_ft.net.net import Net

__all__ = ["Net"]
