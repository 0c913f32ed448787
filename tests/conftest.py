import os
import sys

import pytest
import torch

# tools/ holds the command-line tools and the miniatures of Detectron2's builtin datasets (a
# fixture of these tests and of tools/make_miniatures.py, not part of the library).
sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools")
)


@pytest.fixture(scope="module")
def one_thread():
    """
    Run a module's tests on one thread (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    their tiny models run several times faster on one thread than on two on a shared machine,
    where a second OpenMP thread mostly waits for a busy core.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# The prefix of the miniatures' names in the test session: "mini_voc_2007_test", ...
MINI = "mini_"


@pytest.fixture(scope="session")
def miniatures(tmp_path_factory):
    """
    The miniatures of Detectron2's builtin datasets (miniatures), 96 px, 8
    train and 4 val images per layout, written once per session and registered as
    ``mini_<builtin name>`` with Detectron2's own registration functions.

    Returns:
        str: their root (what DETECTRON2_DATASETS would point at).
    """
    from miniatures import register_miniatures, write_miniatures

    root = str(tmp_path_factory.mktemp("miniatures"))
    write_miniatures(root, image_size=96, num_train=8, num_val=4)
    register_miniatures(root, MINI)
    return root
