"""caffe_ft: Caffe-compatible fine-tuning on PyTorch."""
__version__ = "0.1.0"
