"""`caffe_ft <action> [flags] [args]`: Caffe's actions with gflags-style flags.

`-solver x`, `--solver x`, `-solver=x` and `--solver=x` are the same flag;
boolean flags also take `-gray`, `-nogray` and `-gray=false`. A user error
(CaffeError) prints one line and exits 1 (`-v` adds the traceback); a usage
error exits 2 and lists what is available.
"""
from __future__ import annotations

import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from caffe_ft.errors import CaffeError, UsageError


@dataclass(frozen=True)
class Flag:
    name: str
    default: Any
    help: str


@dataclass
class Action:
    name: str
    help: str
    usage: str
    run: Callable[[dict[str, Any], list[str]], int]
    flags: dict[str, Flag] = field(default_factory=dict)
    nargs: tuple[int, int | None] = (0, 0)


ACTIONS: dict[str, Action] = {}
# Flags every action accepts.
COMMON_FLAGS = (Flag("v", False, "print tracebacks of errors"),)


def action(name: str, help: str, usage: str = "", flags: Sequence[Flag] = (),
           nargs: tuple[int, int | None] = (0, 0)) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Register `caffe_ft <name>`; the function gets (flags, positional args)."""
    def wrap(run: Callable[[dict[str, Any], list[str]], int]) -> Callable[..., int]:
        table = {f.name: f for f in (*COMMON_FLAGS, *flags)}
        ACTIONS[name] = Action(name, help, usage, run, table, nargs)
        return run
    return wrap


def _convert(flag: Flag, text: str) -> Any:
    kind = type(flag.default)
    try:
        if kind is bool:
            lowered = text.lower()
            if lowered in ("true", "1", "yes", "t", "y"):
                return True
            if lowered in ("false", "0", "no", "f", "n"):
                return False
            raise ValueError(text)
        return kind(text)
    except ValueError:
        raise UsageError(f"flag -{flag.name}: '{text}' is not a valid {kind.__name__}") from None


def parse_flags(act: Action, argv: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    values = {name: flag.default for name, flag in act.flags.items()}
    positional: list[str] = []
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--":
            positional.extend(args)
            break
        if not arg.startswith("-") or arg == "-" or _is_number(arg):
            positional.append(arg)
            continue
        name, eq, text = arg.lstrip("-").partition("=")
        flag = act.flags.get(name)
        if flag is None and name.startswith("no") and isinstance(
                act.flags.get(name[2:], Flag("", None, "")).default, bool) and not eq:
            values[name[2:]] = False
            continue
        if flag is None:
            raise UsageError(f"unknown flag -{name} for '{act.name}'.\n{flag_help(act)}")
        if eq:
            values[name] = _convert(flag, text)
        elif isinstance(flag.default, bool):
            values[name] = True
        elif args:
            values[name] = _convert(flag, args.pop(0))
        else:
            raise UsageError(f"flag -{name} needs a value")
    low, high = act.nargs
    if len(positional) < low or (high is not None and len(positional) > high):
        raise UsageError(f"usage: caffe_ft {act.name} {act.usage}".rstrip())
    return values, positional


def flag_arguments(values: dict[str, Any]) -> list[str]:
    """Parsed flag values back as `-name=value` arguments (to re-run an action)."""
    return [f"-{name}={str(value).lower() if isinstance(value, bool) else value}"
            for name, value in values.items()]


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def flag_help(act: Action) -> str:
    lines = [f"usage: caffe_ft {act.name} {act.usage}".rstrip(), "flags:"]
    for flag in act.flags.values():
        default = str(flag.default).lower() if isinstance(flag.default, bool) else repr(flag.default)
        lines.append(f"  -{flag.name} ({flag.help}) default: {default}")
    return "\n".join(lines)


def actions_help() -> str:
    width = max(len(name) for name in ACTIONS)
    rows = "\n".join(f"  {name.ljust(width)}  {act.help}" for name, act in sorted(ACTIONS.items()))
    return f"usage: caffe_ft <action> [flags] [args]\nactions:\n{rows}"


def _load_actions() -> None:
    # Importing these modules registers their actions.
    from caffe_ft.cli import actions  # noqa: F401


def main(argv: Sequence[str] | None = None) -> int:
    _load_actions()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "-help", "--help", "help"):
        print(actions_help())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    act = ACTIONS.get(name)
    if act is None:
        print(f"caffe_ft: unknown action: {name}\n{actions_help()}", file=sys.stderr)
        return 2
    verbose = any(a.lstrip("-") in ("v", "v=true") for a in rest)
    try:
        if any(a in ("-h", "-help", "--help") for a in rest):
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
