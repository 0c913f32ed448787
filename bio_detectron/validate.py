"""
Checks of configuration values, in one place: the config readers of the integration (yacs
``MODEL.BIO``, LazyConfig ``train.*``, the trainers' hooks) call these, and their errors name the
key, the value given and what is allowed. The PyTorch-only core raises plain errors of its own.
"""

import numbers

__all__ = ["nonnegative_int"]


def nonnegative_int(value, key: str) -> int:
    """
    ``value`` as an int; a ValueError naming ``key`` when it is not an integer >= 0 (a period,
    a count: 0 turns the thing off).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{key}={value!r}: must be an integer >= 0 (0 turns it off)")
    return int(value)
