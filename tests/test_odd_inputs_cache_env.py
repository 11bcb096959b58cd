"""An AMK_CACHE_DISABLE naming no cache kind is the user's mistake, not AMK's: a usage error (exit 2) that names
the variable, never an internal error with a traceback (exit 3)."""

from __future__ import annotations

import pytest

import amk
from amk.cache import Cache
from tests._cli import cli_json


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
