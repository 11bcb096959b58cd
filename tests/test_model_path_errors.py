"""A path object names a checkpoint directory, never a built-in (HARNESS.md section 2). One that does not exist is
refused with where it pointed; it was told "did you mean 'toy'?" for Path("toy"), the name it had typed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import amk
from amk.schedule.errors import UnknownModelError


def test_a_missing_path_named_as_a_built_in_is_pointed_at_the_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UnknownModelError) as e:
        amk.load_model(Path("toy"), weights=False)
    msg = str(e.value)
    assert str(tmp_path / "toy") in msg and "did you mean" not in msg
    assert "the built-in 'toy' is named by a string" in msg
    assert amk.load_model("toy", weights=False).name == "toy"  # the string still names the built-in


def test_a_missing_path_of_another_name_says_where(tmp_path):
    with pytest.raises(UnknownModelError) as e:
        amk.load_model(tmp_path / "no-such-checkpoint", weights=False)
    assert str(tmp_path / "no-such-checkpoint") in str(e.value) and "built-in" not in str(e.value)


def test_a_missing_string_keeps_its_near_name():
    with pytest.raises(UnknownModelError, match="did you mean 'toy'"):
        amk.load_model("toyy", weights=False)


def test_a_path_like_other_than_pathlib_is_a_path(tmp_path):
    class Where(os.PathLike):
        def __fspath__(self):
            return str(tmp_path / "toy")

    with pytest.raises(UnknownModelError, match="a path names a checkpoint directory"):
        amk.load_model(Where(), weights=False)


def test_the_cli_leads_a_checkpoint_error_with_model(capsys, tmp_path):
    from _cli import cli_json

    code, out = cli_json(capsys, "evaluate", "--model", str(tmp_path), "--gpu", "cpu-sim")
    assert code == 2
    text = json.dumps(out)
    assert f"--model: {tmp_path}: holds no config.json" in text, text[:600]
