"""
bio_detectron: Detectron2 models trained with biologically-plausible learning rules.

:mod:`bio_detectron.core` needs nothing but PyTorch: ``import bio_detectron`` and
``bio_detectron.convert_model`` work without detectron2. When detectron2 is installed, importing
the package also registers its backbones, RetinaNet head and meta-architectures with detectron2,
and the embedded datasets with its catalogs. An installed detectron2 that fails to import is an
error here too, never skipped.
"""

import importlib.util

from . import core
from .core import *  # noqa: F401,F403  (the core's public API is the package's: core.__all__)

from . import model_zoo  # noqa: F401  isort: skip  (finds the configs; detectron2 to load them)

__version__ = "0.1.0"

# The names below exist only with detectron2 (see __getattr__).
_DETECTRON2_NAMES = ("add_bio_config", "add_classification_config", "bio_plausible")

# Names imported here are public through __all__ (ruff cannot read a computed one: hence noqa).
__all__ = sorted([*core.__all__, *_DETECTRON2_NAMES, "model_zoo"])

# find_spec tells "not installed" (None) apart from "installed": an installed detectron2 is then
# imported below, and whatever breaks in it is raised, not taken for its absence.
HAS_DETECTRON2 = importlib.util.find_spec("detectron2") is not None

if HAS_DETECTRON2:
    from ._extras import needs_extra  # isort: skip

    with needs_extra("detectron2", "bio_detectron's detectron2 integration"):
        from .config import add_bio_config, add_classification_config  # noqa: F401  isort: skip
        from . import data as _data  # noqa: F401  (registers the embedded datasets)
        from . import modeling as _modeling  # noqa: F401  (registers builders)
        from .modeling import bio_plausible  # noqa: F401


def __getattr__(name):
    # Only reached for names the module does not have (PEP 562).
    if name in _DETECTRON2_NAMES:
        raise ImportError(
            f"bio_detectron.{name} needs detectron2, which is not installed; "
            "bio_detectron.convert_model works without it "
            "(docs/usage.md, 'Installing as a library')"
        )
    raise AttributeError(f"module 'bio_detectron' has no attribute {name!r}")
