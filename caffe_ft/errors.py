"""Errors a user can act on.

Anything raised as CaffeError is the user's to fix (a bad file, flag or net):
the CLI prints its message on one line and exits 1, with no traceback unless
`-v` is given. Bugs stay ordinary exceptions so they keep their traceback.
"""
from __future__ import annotations


class CaffeError(Exception):
    """A user error whose message names the file, line, layer or key at fault."""


class UsageError(CaffeError):
    """A command line that does not fit the action's usage (exit code 2)."""
