"""The loader's kernel cache without a GPU: NVRTC and cupy's module are stand-ins, the cache and the keys are
the real ones. A new process (an empty in-process table) loads a built variant from the file cache instead of
compiling it again; a cache that cannot be written costs a compile, never the build."""

from __future__ import annotations

import logging
import types

import pytest

import amk
from amk.cache import Cache
from amk.schedule import lower
from amk.vm import loader


class FakeModule:
    def __init__(self):
        self.cubin = None

    def load(self, cubin):
        self.cubin = cubin


@pytest.fixture
def fake_nvrtc(monkeypatch):
    """Counts compiles; every compile of the same source gives the same bytes."""
    compiled = []

    def compile_cubin(code, arch):
        compiled.append(arch)
        return b"CUBIN:" + arch.encode() + b":" + str(len(code)).encode()

    cupy = types.SimpleNamespace(cuda=types.SimpleNamespace(function=types.SimpleNamespace(Module=FakeModule)))
    monkeypatch.setattr(loader, "_cupy", lambda: cupy)
    monkeypatch.setattr(loader, "nvrtc_version", lambda: "13.0")
    monkeypatch.setattr(loader, "cuda_include_dir", lambda: "/cuda/include")
    monkeypatch.setattr(loader, "compile_cubin", compile_cubin)
    monkeypatch.setattr(loader, "_MODULES", {})
    return compiled


@pytest.fixture(scope="module")
def program():
    return lower(amk.load_model("toy"), "h100-sxm", None, 64)


def test_a_new_process_loads_the_built_variant_from_the_file_cache(fake_nvrtc, program, tmp_path):
    module, key, origin = loader.build_module(program, "sm_90", Cache(tmp_path))
    assert origin == "compiled" and fake_nvrtc == ["sm_90"]
    loader._MODULES.clear()  # what a new process starts with
    again, key2, origin2 = loader.build_module(program, "sm_90", Cache(tmp_path))
    assert (origin2, key2, again.cubin) == ("file", key, module.cubin)
    assert fake_nvrtc == ["sm_90"]
    _, _, origin3 = loader.build_module(program, "sm_90", Cache(tmp_path))
    assert origin3 == "memory"


def test_another_architecture_or_compile_option_is_another_entry(fake_nvrtc, program, tmp_path, monkeypatch):
    loader.build_module(program, "sm_90", Cache(tmp_path))
    loader._MODULES.clear()
    _, _, origin = loader.build_module(program, "sm_100", Cache(tmp_path))
    assert origin == "compiled"
    loader._MODULES.clear()
    monkeypatch.setattr(loader, "cuda_include_dir", lambda: "/other/cuda/include")
    _, _, origin = loader.build_module(program, "sm_90", Cache(tmp_path))
    assert origin == "compiled" and fake_nvrtc == ["sm_90", "sm_100", "sm_90"]


def test_an_unwritable_cache_costs_a_compile_not_the_build(fake_nvrtc, program, tmp_path, monkeypatch, caplog):
    cache = Cache(tmp_path)

    def refuse(*_):
        raise PermissionError(13, "read-only file system")

    monkeypatch.setattr(cache, "put", refuse)
    with caplog.at_level(logging.WARNING, logger="amk.vm"):
        module, _, origin = loader.build_module(program, "sm_90", cache)
    assert origin == "compiled" and module.cubin.startswith(b"CUBIN:sm_90")
    assert any("not written to the cache" in r.getMessage() for r in caplog.records)
