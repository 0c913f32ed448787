import pytest
import torch


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
