"""Deprecated: the detections figures moved to :mod:`bio_detectron.visualize`."""

import warnings

from ..visualize import *  # noqa: F401,F403
from ..visualize import __all__  # noqa: F401

warnings.warn(
    "bio_detectron.engine.visualize moved to bio_detectron.visualize",
    DeprecationWarning,
    stacklevel=2,
)
