"""pycaffe's API over caffe_ft, module for module as BVLC's python/caffe
lays it out (net, mode, ...). `import caffe_ft as caffe` (caffe_ft's own
__init__) hands out its names."""
