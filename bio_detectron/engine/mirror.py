"""Deprecated: the weight mirror's hook moved to :mod:`bio_detectron.engine.mirror_hook`."""

import warnings

from .mirror_hook import *  # noqa: F401,F403
from .mirror_hook import DEFAULTS  # noqa: F401

warnings.warn(
    "bio_detectron.engine.mirror moved to bio_detectron.engine.mirror_hook",
    DeprecationWarning,
    stacklevel=2,
)
