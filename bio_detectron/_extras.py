"""
The optional dependencies: setup.py's extras, and the error that names the one to install.

``pip install bio_detectron`` pulls torch and torchvision only, which is all
:mod:`bio_detectron.core` needs. Everything else belongs to an extra (``pip install
'bio_detectron[<extra>]'``), and an import that needs a missing one fails with an error naming it
(:func:`needs_extra`). Only the standard library here: setup.py reads :data:`EXTRAS` from this
file before anything is installed.
"""

import contextlib

# extra -> {requirement as pip takes it: the top-level module it installs}.
EXTRAS = {
    # The detectron2 integration (config, modeling, engine, data, evaluation, visualize), besides
    # detectron2 itself (tools/install_detectron2.sh): what it imports, and what the parts of
    # detectron2 it runs import (cv2: detectron2.data's transforms; matplotlib: its Visualizer;
    # tensorboard: its event writers).
    "detectron2": {
        "numpy": "numpy",
        "Pillow": "PIL",
        "pycocotools>=2.0.2": "pycocotools",
        "fvcore": "fvcore",
        "iopath": "iopath",
        "opencv-python-headless": "cv2",
        "tabulate": "tabulate",
        "tensorboard": "tensorboard",
        "matplotlib": "matplotlib",
    },
    # The photographs the embedded photos dataset is cut from (bio_detectron/data/photos.py).
    "datasets": {"scikit-image": "skimage", "scikit-learn": "sklearn"},
    # The figures of tools/plot_alignment.py and tools/plot_budgets.py (yaml: the runs' configs).
    "plot": {"matplotlib": "matplotlib", "pyyaml": "yaml"},
}


@contextlib.contextmanager
def needs_extra(extra: str, what: str):
    """
    Turns a missing module of ``extra`` imported inside the block into an ImportError that says
    what needs it and which extra installs it. Any other import error passes through unchanged.

    Args:
        extra: a key of :data:`EXTRAS`.
        what: what needs the extra, for the message, e.g. "the photos dataset".
    """
    modules = set(EXTRAS[extra].values())
    try:
        yield
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] not in modules:
            raise
        raise ModuleNotFoundError(
            f"{what} needs {e.name!r}, which is not installed: pip install "
            f"'bio_detectron[{extra}]' (extras: {', '.join(EXTRAS)}, all; `make install` installs "
            "everything)",
            name=e.name,
        ) from e
