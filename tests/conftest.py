import importlib.util
import os
import runpy
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# tools/ holds the command-line tools and the miniatures of Detectron2's builtin datasets (a
# fixture of these tests and of tools/make_miniatures.py, not part of the library).
sys.path.insert(0, os.path.join(REPO, "tools"))

# BIO_CORE_ONLY=1: the tests see what `pip install bio_detectron` leaves, detectron2 and every
# extra's modules absent (numpy and Pillow stay: torchvision, a requirement, needs them). Setting
# sys.modules[name] = None makes an import fail and find_spec say None, as when not installed; it
# must happen before bio_detectron is imported, so the extras are read from their file. A test
# that imports an absent module is reported skipped, naming it, and every other test must pass:
# tests/test_install.py runs the core's test files so (`make test-core`).
CORE_ONLY = os.environ.get("BIO_CORE_ONLY") == "1"
ABSENT = ()
if CORE_ONLY:
    _extras = runpy.run_path(os.path.join(REPO, "bio_detectron", "_extras.py"))["EXTRAS"]
    _modules = {m for extra in _extras.values() for m in extra.values()}
    ABSENT = tuple(sorted({"detectron2", *_modules} - {"numpy", "PIL"}))
    for _name in ABSENT:
        sys.modules[_name] = None

import torch  # noqa: E402  (after the blocking above: torch imports none of those modules)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    if not CORE_ONLY or call.excinfo is None or not call.excinfo.errisinstance(ImportError):
        return
    missing = (getattr(call.excinfo.value, "name", None) or "").split(".")[0]
    if missing in ABSENT:
        path, line, _ = item.reportinfo()
        report.outcome = "skipped"
        report.longrepr = (str(path), (line or 0) + 1, f"needs {missing} (BIO_CORE_ONLY=1)")


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


@pytest.fixture(scope="session")
def load_tool():
    """
    ``load_tool("protocol")``: a script of ``tools/`` imported as a module under test (named
    ``<name>_under_test``), with ``tools/`` on ``sys.path`` while it imports, since the scripts
    import each other from their own folder.
    """
    tools = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools")

    def load(name):
        sys.path.insert(0, tools)
        try:
            path = os.path.join(tools, f"{name}.py")
            spec = importlib.util.spec_from_file_location(f"{name}_under_test", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        finally:
            sys.path.remove(tools)
        return module

    return load


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
