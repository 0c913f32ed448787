"""
Checks of configuration values, in one place: the config readers of the integration (yacs
``MODEL.BIO`` and ``SOLVER.BIO``, :func:`bio_detectron.bio_plausible`'s arguments, LazyConfig
``train.*``, the trainers' hooks) call these where they read a config, and their errors name the
key, the value given and what is allowed. The PyTorch-only core raises plain errors of its own,
worded with its own argument names; :func:`core_error` re-words one with the config key.
"""

import math
import numbers
from typing import Collection, Mapping

from .core.convert import ArgumentError
from .core.rules import SCALES, available_rules, parse_scale

__all__ = [
    "core_error",
    "integer",
    "learning_rule",
    "nonnegative_int",
    "nonnegative_number",
    "one_of",
    "part_names",
    "scale",
]


def nonnegative_int(value, key: str) -> int:
    """
    ``value`` as an int; a ValueError naming ``key`` when it is not an integer >= 0 (a period,
    a count: 0 turns the thing off).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{key}={value!r}: must be an integer >= 0 (0 turns it off)")
    return int(value)


def nonnegative_number(value, key: str, zero: str) -> float:
    """
    ``value`` as a float; a ValueError naming ``key`` when it is not a finite number >= 0.

    Args:
        zero: what 0 means, for the message (e.g. "SOLVER.BASE_LR").
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not (value >= 0 and math.isfinite(value))
    ):
        raise ValueError(f"{key}={value!r}: must be a number >= 0 (0: {zero})")
    return float(value)


def integer(value, key: str) -> int:
    """``value`` as an int; a ValueError naming ``key`` when it is not an integer."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{key}={value!r} must be an integer")
    return int(value)


def one_of(value, allowed: Collection, key: str):
    """``value``; a ValueError naming ``key`` when it is not one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"{key}={value!r} is not allowed; use one of {tuple(allowed)}")
    return value


def learning_rule(value, key: str) -> str:
    """``value``; a ValueError naming ``key`` when it is not a registered learning rule."""
    allowed = available_rules()
    if value not in allowed:
        raise ValueError(f"{key}={value!r} is not a learning rule; allowed: {allowed}")
    return value


def scale(value, key: str):
    """:func:`~bio_detectron.core.rules.parse_scale` of ``value``, its error naming ``key``."""
    try:
        return parse_scale(value)
    except ValueError:
        raise ValueError(
            f"{key}={value!r} is not allowed; use one of {SCALES} or a positive number"
        ) from None


def part_names(mapping: Mapping, allowed: Collection[str], key: str) -> dict:
    """
    ``mapping`` with its keys lower-cased; a ValueError naming ``key`` when a key, in any case,
    is not one of ``allowed``.
    """
    unknown = sorted(k for k in mapping if str(k).lower() not in allowed)
    if unknown:
        raise ValueError(f"{key} has unknown part(s) {unknown}; the parts are {tuple(allowed)}")
    return {str(k).lower(): v for k, v in mapping.items()}


def core_error(error: ArgumentError, keys: Mapping[str, str]) -> ValueError:
    """
    The core's error about one of its arguments, worded with the config key that set it.

    Args:
        keys: the core's argument name ("exclude", "unsupported", ...) -> the config key.
    """
    return ValueError(error.naming(keys.get(error.argument, error.argument)))
