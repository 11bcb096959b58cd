"""The commit a verdict and every results file record: HEAD, marked "+dirty" where the tracked files differ from it
(a figure from a tree with a kernel probe in it, or from a copy whose .git is older than its files, is not HEAD's);
AMK_COMMIT overrides it for a copied tree."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from amk.harness import environment
from amk.harness.environment import commit_of, git_commit

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _git(repo, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                   capture_output=True)


def test_head_and_a_dirty_tree(tmp_path):
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.cuh").write_text("1\n")
    _git(tmp_path, "add", "a.cuh")
    _git(tmp_path, "commit", "-q", "-m", "one")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    assert commit_of(tmp_path) == head
    (tmp_path / "results.tsv").write_text("x\n")  # an untracked output is no change of the sources
    assert commit_of(tmp_path) == head
    (tmp_path / "a.cuh").write_text("2\n")
    assert commit_of(tmp_path) == head + "+dirty"


def test_outside_a_repository(tmp_path):
    assert commit_of(tmp_path) is None


def test_amk_commit_overrides(monkeypatch):
    monkeypatch.setenv("AMK_COMMIT", "0123abc")
    git_commit.cache_clear()
    try:
        assert environment.git_commit() == "0123abc"
    finally:
        git_commit.cache_clear()
