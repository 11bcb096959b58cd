"""The cache's environment: an AMK_CACHE_DISABLE naming no cache kind is the user's mistake, not AMK's: a usage
error (exit 2) that names the variable, never an internal error with a traceback (exit 3); and a cache the user may
only read is listed, not refused."""

from __future__ import annotations

import pytest
from _cli import cli_json

import amk
from amk.cache import Cache


def test_an_unknown_kind_in_amk_cache_disable_is_an_argument_error(tmp_path, monkeypatch):
    monkeypatch.setenv("AMK_CACHE_DISABLE", "program, prog")
    with pytest.raises(amk.ArgumentError) as e:
        Cache(tmp_path)
    assert e.value.argument == "AMK_CACHE_DISABLE"
    assert "'prog'" in str(e.value) and "program" in str(e.value)


def test_cli_exits_2_naming_amk_cache_disable(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AMK_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("AMK_CACHE_DISABLE", "kernals")
    code, out = cli_json(capsys, "evaluate", "--model", "toy")
    assert code == 2 and out["error_type"] == "usage", out
    assert out["error"].startswith("AMK_CACHE_DISABLE: ") and "'kernals'" in out["error"]


def test_a_read_only_cache_is_listed_and_only_clear_refuses_it(tmp_path, monkeypatch, capsys):
    """`cache ls` and `cache stats` write nothing, so a cache the user may not write (a shared or read-only
    mount) is listed; `cache clear` still refuses it, naming AMK_CACHE_DIR. The access check is what a read-only
    root fails (tests may run as root, for whom chmod changes nothing)."""
    import os

    import amk.cache as cache_mod

    root = tmp_path / "cache"
    Cache(root).put("program", "ab" * 32, b"payload")
    monkeypatch.setenv("AMK_CACHE_DIR", str(root))
    monkeypatch.setattr(cache_mod, "_default", None, raising=False)
    real = os.access
    monkeypatch.setattr(cache_mod.os, "access", lambda p, mode: False if mode & os.W_OK else real(p, mode))
    code, out = cli_json(capsys, "cache", "ls")
    assert code == 0 and [e["key"] for e in out["entries"]] == ["ab" * 32], out
    code, out = cli_json(capsys, "cache", "stats")
    assert code == 0 and out["files"]["program"]["entries"] == 1, out
    code, out = cli_json(capsys, "cache", "clear")
    assert code == 2 and out["error"].startswith("AMK_CACHE_DIR: ") and "not writable" in out["error"], out
    assert len(Cache(root).ls()) == 1
