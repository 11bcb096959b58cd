"""A module-scoped, autouse fixture: the tests of a module share one fresh AMK_CACHE_DIR. Import `cache_dir`
into a test module to use it; a test that names it gets the directory."""

import pytest


@pytest.fixture(scope="module", autouse=True)
def cache_dir(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    path = tmp_path_factory.mktemp("amk_cache")
    mp.setenv("AMK_CACHE_DIR", str(path))
    yield path
    mp.undo()
