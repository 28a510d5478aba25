"""Imports every module that registers CLI actions. A new action module adds
its import here."""
from caffe_ft.cli import data_tools  # noqa: F401
from caffe_ft.cli import deploy_tools  # noqa: F401
from caffe_ft.cli import upgrade_tools  # noqa: F401
from caffe_ft.cli import train  # noqa: F401
