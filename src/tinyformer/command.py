"""What a ``tinyformer`` subcommand is: :class:`Command` (name, help, arguments, ``run``), and the argument types
the subcommands share (positive numbers, a TCP port), each refusing bad input with argparse's one-line error.

Boundary: no subcommand and no parser here. :mod:`tinyformer.cli` builds the parser from the commands;
the modules that define a ``COMMAND`` (``serving.cli``, ``workshop.cli``, ``memory.doctor``) import this module,
never ``tinyformer.cli``.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    name: str
    summary: str  # one line, shown by `tinyformer --help`
    description: str  # shown by `tinyformer NAME --help`
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]  # returns the exit code
    epilog: str = ""  # examples, shown after the options


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a whole number above 0, got {text!r}")
    return value


def port_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a TCP port, a whole number from 1 to 65535, got {text!r}")
    return value


def _finite_float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def positive_float(text: str) -> float:
    value = _finite_float(text)
    if value is None or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number above 0 (e.g. 2 or 0.5), got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    value = _finite_float(text)
    if value is None or value < 0:
        raise argparse.ArgumentTypeError(f"expected a number of 0 or more (e.g. 0 or 1.5), got {text!r}")
    return value
