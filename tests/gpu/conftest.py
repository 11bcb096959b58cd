import pytest
import torch


def _cuda_vm_available() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        import cupy  # noqa: F401
    except ImportError:
        return False
    return True


def pytest_collection_modifyitems(config, items):
    if _cuda_vm_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device and cupy")
    for item in items:
        if "tests/gpu" in str(item.fspath):
            item.add_marker(skip)


@pytest.fixture(scope="module")
def target():
    """The GPU target of this machine (its SM count and shared memory), for lowering as evaluate does."""
    from amk.schedule import detect_target

    return detect_target()
