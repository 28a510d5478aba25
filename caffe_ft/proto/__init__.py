"""Caffe's schema: the generated bindings (caffe_pb2, from proto/caffe.proto).

`str()` of every caffe_pb2 message prints pycaffe's protobuf text (see
caffe_ft.proto.text), in every part of caffe_ft alike: scripts write their
prototxt files with `str(message)` and expect the text real pycaffe wrote.
caffe_ft's own file writers use text_format and are not affected."""
from caffe_ft.proto import caffe_pb2
from caffe_ft.proto.text import use_pycaffe_str

use_pycaffe_str(caffe_pb2)
