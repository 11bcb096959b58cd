"""A cache directory that cannot be used: `amk doctor` reports exactly what the commands refuse (one check,
amk.cache.root_problem), every command refuses it with the same exit code (2, usage; doctor, a report, exits 3
environment with `error` and `error_type`), `amk cache` creates no missing directory, and `ls`/`clear` touch only
files the cache wrote, removing the lock files no process holds."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest
from _cli import cli_json

import amk.cache as cache_mod
from amk.cache import Cache
from amk.cli import main

K = Cache.key("program", name="k")


@pytest.fixture(autouse=True)
def _fresh_process_cache(monkeypatch):
    monkeypatch.setattr(cache_mod, "_default", None, raising=False)  # each test: a new process's cache


def _read_only(monkeypatch, *paths: Path) -> None:
    """os.access denies writing to `paths` (tests may run as root, for whom chmod changes nothing)."""
    real, denied = os.access, {str(p) for p in paths}
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p) in denied and mode & os.W_OK
                        else real(p, mode))


def _refusals(capsys, tmp_path) -> dict[str, tuple[int, str | None]]:
    """The exit code and error_type each command gives the AMK_CACHE_DIR set now; and doctor's and compile's
    error texts."""
    got = {}
    for name, argv in (("ls", ["cache", "ls"]), ("stats", ["cache", "stats"]), ("clear", ["cache", "clear"]),
                       ("compile", ["compile", "--model", "toy", "--out", str(tmp_path / "p.json")])):
        code, out = cli_json(capsys, *argv)
        got[name] = (code, out.get("error_type"))
        got[name + "_error"] = out.get("error")
    code, out = cli_json(capsys, "doctor")
    got["doctor"] = (code, out.get("error_type"))
    got["doctor_problems"] = out["problems"]
    return got


def _broken_dirs(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "a_file").write_text("")
    (tmp_path / "cachelink").symlink_to("nowhere")
    dirs = {"file": tmp_path / "a_file", "dangling link": tmp_path / "cachelink",
            "below a dangling link": tmp_path / "cachelink" / "sub", "below a file": tmp_path / "a_file" / "cache"}
    if Path("/proc/self").is_dir():
        dirs["/proc"] = Path("/proc/amk")
    return dirs


def test_every_command_refuses_an_unusable_cache_dir_with_one_code_and_doctor_names_it(capsys, monkeypatch,
                                                                                        tmp_path):
    for what, root in _broken_dirs(tmp_path).items():
        monkeypatch.setenv("AMK_CACHE_DIR", str(root))
        got = _refusals(capsys, tmp_path)
        for verb in ("ls", "stats", "clear", "compile"):
            assert got[verb] == (2, "usage"), (what, verb, got)
            assert got[verb + "_error"] == got["compile_error"], (what, verb, got)
        assert got["doctor"] == (3, "environment") and got["doctor_problems"] == [got["compile_error"]], (what, got)
        assert got["compile_error"].startswith(f"AMK_CACHE_DIR: {root}: "), got
    assert not (tmp_path / "nowhere").exists()


def test_a_dangling_link_is_named_with_its_target(capsys, monkeypatch, tmp_path):
    (tmp_path / "cachelink").symlink_to("nowhere")
    monkeypatch.setenv("AMK_CACHE_DIR", str(tmp_path / "cachelink"))
    code, out = cli_json(capsys, "doctor")
    assert code == 3 and "not a directory: a symbolic link to 'nowhere', which does not exist" in out["error"], out


@pytest.mark.parametrize("where", ["program", "program/ab"])
def test_a_read_only_entry_folder_is_reported_by_doctor_and_refused_by_the_commands(capsys, monkeypatch, tmp_path,
                                                                                  where):
    root = tmp_path / "c"
    Cache(root).put("program", "ab" * 32, b"payload")
    monkeypatch.setenv("AMK_CACHE_DIR", str(root))
    _read_only(monkeypatch, root / where)
    code, doc = cli_json(capsys, "doctor")
    assert code == 3 and len(doc["problems"]) == 1 and str(root / where) in doc["problems"][0], doc
    assert "not writable, where the cache keeps its entries" in doc["problems"][0]
    code, out = cli_json(capsys, "compile", "--model", "toy", "--out", str(tmp_path / "p.json"))
    assert (code, out["error_type"], out["error"]) == (2, "usage", doc["problems"][0]), out
    res = tmp_path / "r.tsv"
    code, out = cli_json(capsys, "loop", "-q", "--model", "toy", "--gpu", "cpu-sim", "--budget", "1", "--results",
                         str(res), "--corpus", str(tmp_path / "c.jsonl"))
    assert (code, out["error_type"], out["error"]) == (2, "usage", doc["problems"][0]) and not res.exists(), out
    code, out = cli_json(capsys, "cache", "clear")
    assert (code, out["error"]) == (2, doc["problems"][0]) and len(Cache(root).ls()) == 1, out
    code, out = cli_json(capsys, "cache", "ls")  # listing writes nothing: a read-only folder is listed
    assert code == 0 and len(out["entries"]) == 1, out


def test_doctor_json_failure_carries_error_and_error_type(capsys, monkeypatch, tmp_path):
    (tmp_path / "a_file").write_text("")
    monkeypatch.setenv("AMK_CACHE_DIR", str(tmp_path / "a_file"))
    code, out = cli_json(capsys, "doctor")
    assert code == 3 and out["ok"] is False and out["error_type"] == "environment", out
    assert out["error"] == out["problems"][0] and out["python"], out
    assert main(["doctor"]) == 3
    err = capsys.readouterr().err
    assert err.startswith("amk: error: doctor found 1 problem\n") and f"PROBLEM: {out['error']}" in err, err


def test_a_read_only_root_is_refused_by_clear_only(capsys, monkeypatch, tmp_path):
    root = tmp_path / "c"
    Cache(root).put("program", K, b"payload")
    monkeypatch.setenv("AMK_CACHE_DIR", str(root))
    _read_only(monkeypatch, root)
    assert cli_json(capsys, "cache", "ls")[0] == 0 and cli_json(capsys, "cache", "stats")[0] == 0
    code, out = cli_json(capsys, "cache", "clear")
    assert (code, out["error_type"]) == (2, "usage") and f"{root}: not writable" in out["error"], out


def test_cache_commands_on_a_missing_directory_create_nothing(capsys, monkeypatch, tmp_path):
    root = tmp_path / "mistyped" / "cache"
    monkeypatch.setenv("AMK_CACHE_DIR", str(root))
    code, out = cli_json(capsys, "cache", "ls")
    assert code == 0 and out["exists"] is False and out["entries"] == [], out
    code, out = cli_json(capsys, "cache", "stats")
    assert code == 0 and out["exists"] is False, out
    code, out = cli_json(capsys, "cache", "clear")
    assert code == 0 and out["exists"] is False and out["removed"] == 0, out
    assert main(["cache", "ls"]) == 0 and "no cache there" in capsys.readouterr().out
    assert main(["cache", "clear"]) == 0 and "no cache at" in capsys.readouterr().out
    assert not (tmp_path / "mistyped").exists()


def test_ls_and_clear_touch_only_the_caches_own_files(capsys, monkeypatch, tmp_path):
    root = tmp_path / "c"
    c = Cache(root)
    c.put("program", K, b"payload", label={"model": "toy"})
    shard = root / "program" / K[:2]
    other = Cache.key("program", name="other")
    strays = [shard / "notes.bin",  # a user's file
              shard / f"{other}.bin",  # named as an entry, in the wrong folder, without the header
              root / "program" / other[:2] / f"{other}.bin",  # named and placed as one, without the header
              shard / "notes.label.json"]
    for p in strays:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"user data")
    lk = Cache.key("program", name="link")
    link = root / "program" / lk[:2] / f"{lk}.bin"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(c.path("program", K))  # a link to an entry is no entry either
    monkeypatch.setenv("AMK_CACHE_DIR", str(root))
    code, out = cli_json(capsys, "cache", "ls")
    assert code == 0 and [e["key"] for e in out["entries"]] == [K], out
    assert sorted(s["path"] for s in out["strays"]) == sorted(map(str, [*strays[:3], link])), out
    assert main(["cache", "ls"]) == 0 and f"not a cache entry, left: {strays[0]}" in capsys.readouterr().out
    code, out = cli_json(capsys, "cache", "clear")
    assert code == 0 and out["removed"] == 1, out
    assert all(p.read_bytes() == b"user data" for p in strays) and link.is_symlink()
    assert not c.path("program", K).exists() and not c.label_path("program", K).exists()


def test_clear_removes_the_lock_files_no_process_holds(tmp_path):
    c = Cache(tmp_path)
    held_key = Cache.key("program", name="held")
    c.get_or_create("program", K, lambda: b"built")
    lock = c.path("program", K).with_suffix(".lock")
    assert lock.exists()
    held_path = c.path("program", held_key).with_suffix(".lock")
    held_path.parent.mkdir(parents=True, exist_ok=True)
    with open(held_path, "a+b") as held:  # an entry being built
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        assert Cache(tmp_path).clear() == 1
        assert not lock.exists() and held_path.exists()


def test_a_lock_removed_while_a_process_waits_for_it_is_taken_afresh(monkeypatch, tmp_path):
    """A process that opened a lock file before clear() removed it must not proceed on the removed file, beside
    one that takes the new file at the path: it takes that one itself."""
    c = Cache(tmp_path)
    lock = c.path("program", K).with_suffix(".lock")
    lock.parent.mkdir(parents=True)
    lock.touch()
    real, calls = fcntl.flock, []

    def flock(fd, op):
        if op == fcntl.LOCK_EX and not calls:  # between open() and flock(), clear() takes the file away
            calls.append(fd)
            cache_mod._drop_lock(lock)
            assert not lock.exists()
        return real(fd, op)

    monkeypatch.setattr(cache_mod.fcntl, "flock", flock)
    with c._file_lock("program", K):
        monkeypatch.setattr(cache_mod.fcntl, "flock", real)
        assert lock.exists()
        with open(lock, "rb") as other:  # the file at the path is the one held
            with pytest.raises(BlockingIOError):
                real(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert calls


def test_clear_removes_what_it_can_then_names_the_entry_it_could_not(monkeypatch, tmp_path):
    """An entry the system refuses to unlink: clear removes the others first, then names it. (A directory named
    like an entry is no entry: clear leaves it and ls names it.)"""
    from amk.schedule.errors import EnvironmentProblem

    c = Cache(tmp_path)
    for kind in ("kernel", "reference", "program"):
        c.put(kind, K, kind.encode())
    stuck, real = c.path("program", K), Path.unlink

    def unlink(self, missing_ok=False):
        if self == stuck:
            raise PermissionError(1, "Operation not permitted", str(self))
        return real(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)
    with pytest.raises(EnvironmentProblem, match=rf"removed 2 entries .* could not remove 1 file: {stuck}: "):
        c.clear()
    assert [r["kind"] for r in c.ls()] == ["program"]  # the kernel and the reference entries went first
