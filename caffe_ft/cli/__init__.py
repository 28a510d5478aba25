"""`caffe_ft <action> [flags] [args]`: Caffe's actions with gflags-style flags
(caffe_ft.cli.flags), declared in caffe_ft.cli.actions.

A user error (CaffeError) prints one line and exits 1 (`-v` adds the
traceback); a usage error exits 2 and lists what is available. Only the
action that runs imports its module, so `--help`, the data tools and the
upgrade tools never import torch.
"""
from __future__ import annotations

import sys
import traceback
from collections.abc import Sequence

from caffe_ft.cli.actions import ACTIONS
from caffe_ft.cli.flags import flag_help, own_arguments, parse_flags
from caffe_ft.errors import CaffeError, UsageError


def actions_help() -> str:
    width = max(len(name) for name in ACTIONS)
    rows = "\n".join(f"  {name.ljust(width)}  {act.help}" for name, act in sorted(ACTIONS.items()))
    return f"usage: caffe_ft <action> [flags] [args]\nactions:\n{rows}"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "-help", "--help", "help"):
        print(actions_help())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    act = ACTIONS.get(name)
    if act is None:
        print(f"caffe_ft: unknown action: {name}\n{actions_help()}", file=sys.stderr)
        return 2
    own = own_arguments(act, rest)
    verbose = any(a.lstrip("-") in ("v", "v=true") for a in own)
    try:
        if any(a in ("-h", "-help", "--help") for a in own):
            print(flag_help(act))
            return 0
        flags, positional = parse_flags(act, rest)
        return act.run(flags, positional)
    except UsageError as err:
        print(f"caffe_ft {name}: {err}", file=sys.stderr)
        return 2
    except CaffeError as err:
        if verbose:
            traceback.print_exc()
        print(f"caffe_ft {name}: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"caffe_ft {name}: interrupted", file=sys.stderr)
        return 130
