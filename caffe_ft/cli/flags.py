"""Actions and their gflags-style flags: what an action is, and parsing its
command line.

`-solver x`, `--solver x`, `-solver=x` and `--solver=x` are the same flag;
boolean flags also take `-gray`, `-nogray` and `-gray=false`.

An Action names its runner as "module:function" and imports it only when it
runs, so listing actions, printing their flags or refusing a bad command
line costs no import of torch, cv2 or the data and solver packages.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from caffe_ft.errors import UsageError

Runner = Callable[[dict[str, Any], list[str]], int]


@dataclass(frozen=True)
class Flag:
    name: str
    default: Any
    help: str


# Flags every action accepts.
COMMON_FLAGS = (Flag("v", False, "print tracebacks of errors"),)


@dataclass(frozen=True)
class Action:
    name: str
    help: str
    usage: str
    runner: str  # "module:function"; the function gets (flags, positional args)
    flags: dict[str, Flag]
    nargs: tuple[int, int | None]
    # The first positional argument ends the flags: the rest belong to it (a script's own).
    passthrough: bool = False

    def load(self) -> Runner:
        module, _, function = self.runner.partition(":")
        return getattr(importlib.import_module(module), function)

    def run(self, flags: dict[str, Any], args: list[str]) -> int:
        return self.load()(flags, args)


def action(name: str, help: str, runner: str, usage: str = "", flags: Sequence[Flag] = (),
           nargs: tuple[int, int | None] = (0, 0), passthrough: bool = False) -> Action:
    """`caffe_ft <name>`, run by `runner` ("module:function") with its flags
    and the common ones."""
    return Action(name, help, usage, runner, {f.name: f for f in (*COMMON_FLAGS, *flags)},
                  nargs, passthrough)


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
            if act.passthrough:
                positional.extend(args)
                break
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


def own_arguments(act: Action, argv: Sequence[str]) -> list[str]:
    """The arguments that are the action's own (not a passed-through script's)."""
    if not act.passthrough:
        return list(argv)
    for i, arg in enumerate(argv):
        if not arg.startswith("-") or arg == "-":
            return list(argv[:i])
    return list(argv)


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
