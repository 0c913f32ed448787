"""
Deprecated: the alignment metrics and the probe moved to :mod:`bio_detectron.alignment` and
:mod:`bio_detectron.probe` (PyTorch only), the hook to :mod:`bio_detectron.engine.alignment_hook`.
"""

import warnings

from ..alignment import *  # noqa: F401,F403
from ..alignment import PREFIX  # noqa: F401
from ..probe import ForwardState, converted_layers, probe_gradients, total_loss  # noqa: F401
from .alignment_hook import AlignmentHook, build_alignment_hook  # noqa: F401

warnings.warn(
    "bio_detectron.engine.alignment moved to bio_detectron.alignment (metrics), "
    "bio_detectron.probe (the probe) and bio_detectron.engine.alignment_hook (the hook)",
    DeprecationWarning,
    stacklevel=2,
)
