"""
Detections of trained models drawn side by side (``tools/visualize.py``, the demo's figure):
:mod:`.detections` loads models and images and predicts, :mod:`.drawing` lays out and draws.
"""

from .detections import (
    KeepingCheckpointer,
    VisualizeError,
    draw_detections,
    figure,
    load_images,
    load_model,
    predict,
    read_rgb,
    setup_cfg,
)
from .drawing import (
    GAP,
    TITLE_HEIGHT,
    class_colors,
    compose,
    draw,
    ground_truth,
    title_band,
    write_png,
)

__all__ = [
    "GAP",
    "TITLE_HEIGHT",
    "KeepingCheckpointer",
    "VisualizeError",
    "class_colors",
    "compose",
    "draw",
    "draw_detections",
    "figure",
    "ground_truth",
    "load_images",
    "load_model",
    "predict",
    "read_rgb",
    "setup_cfg",
    "title_band",
    "write_png",
]
