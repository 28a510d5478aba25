"""`caffe_ft python SCRIPT [ARGS]`: a pycaffe script run against caffe_ft
(caffe_ft.pycaffe.runner). The script's own exceptions keep their traceback,
as `python SCRIPT` would print it; its exit status is the action's."""
from __future__ import annotations

from typing import Any

from caffe_ft.pycaffe.runner import run_script


def python_action(flags: dict[str, Any], args: list[str]) -> int:
    run_script(args[0], args[1:])
    return 0
