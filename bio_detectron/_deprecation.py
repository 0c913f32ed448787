"""Old names that moved, kept working with a DeprecationWarning (one implementation for all)."""

import importlib
import warnings
from typing import Callable, Dict, Tuple


def moved_names(module: str, moved: Dict[str, Tuple[str, str, tuple]]) -> Callable:
    """
    A module ``__getattr__`` (PEP 562) for names that moved.

    Args:
        module: the module's ``__name__``.
        moved: old name -> (new module, new name, leading arguments): the old name is the new
            object, or, with arguments, ``functools.partial(new, *arguments)``.
    """

    def __getattr__(name):
        if name not in moved:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        new_module, new_name, args = moved[name]
        shown = f"{new_module}.{new_name}" + (f"{args!r}" if args else "")
        warnings.warn(f"{module}.{name} is {shown} now", DeprecationWarning, stacklevel=2)
        found = getattr(importlib.import_module(new_module), new_name)
        if args:
            import functools

            return functools.partial(found, *args)
        return found

    return __getattr__
