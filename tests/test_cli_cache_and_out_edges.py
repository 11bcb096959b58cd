"""Edges of the cache and of the output flags (HARNESS.md sections 4 and 5): `cache stats --kind` gives that kind
alone in its JSON; a directory where a cache entry belongs is a corrupt entry to a read (a miss, with a warning
naming it), replaced by the write when empty and named when not (never advice to point AMK_CACHE_DIR at a writable
directory), and `cache clear` reports it (exit 3); an unusable cache directory is one line on stderr; '-' names no
output file; a hand-edited last_run_stats.json of the wrong types is left out with a warning; and `report` refuses a
read-only plot and leads a foreign header's refusal with --results."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
from _cli import cli_json

import amk.cache as cache_mod
from amk.cache import Cache
from amk.cli import main
from amk.flywheel.results import ResultRow, Status, append_result

K = Cache.key("program", name="edges")


@pytest.fixture(autouse=True)
def _cache_here(tmp_path, monkeypatch):
    """Each test: its own AMK_CACHE_DIR and working directory, and a new process's cache."""
    monkeypatch.setenv("AMK_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(cache_mod, "_default", None, raising=False)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")


def _compile(capsys, tmp_path) -> tuple[int, dict]:
    """`amk compile` of toy, as a new process runs it: with a cache of no memory layer yet."""
    cache_mod._default = None  # the autouse fixture's monkeypatch restores it
    return cli_json(capsys, "compile", "--model", "toy", "--out", str(tmp_path / "p.json"))


def _program_entry(tmp_path) -> Path:
    (entry,) = (tmp_path / "cache" / "program").glob("??/*.bin")
    return entry


# ---- cache stats --kind -------------------------------------------------------------------------------------------


def test_cache_stats_of_one_kind_gives_that_kind_alone(capsys, tmp_path):
    code, _ = _compile(capsys, tmp_path)
    assert code == 0
    code, out = cli_json(capsys, "cache", "stats", "--kind", "reference")
    assert code == 0 and out["files"] == {"reference": {"entries": 0, "bytes": 0}}, out  # was program: 0 entries
    assert set(out["last_run"]) <= {"reference"}, out
    code, out = cli_json(capsys, "cache", "stats", "--kind", "program")
    assert code == 0 and list(out["files"]) == ["program"] and out["files"]["program"]["entries"] == 1, out
    assert list(out["last_run"]) == ["program"] and out["last_run"]["program"]["writes"] == 1, out
    code, out = cli_json(capsys, "cache", "stats")
    assert code == 0 and set(out["files"]) == set(cache_mod.KINDS) and set(out["last_run"]) == set(cache_mod.KINDS)


# ---- a directory where an entry belongs -----------------------------------------------------------------------------


def test_an_empty_directory_in_an_entrys_place_is_a_miss_and_replaced(tmp_path, caplog):
    c = Cache(tmp_path / "c")
    path = c.path("program", K)
    path.mkdir(parents=True)
    with caplog.at_level(logging.WARNING, logger="amk.cache"):
        assert c.get("program", K) is None
    assert str(path) in caplog.text and "corrupt" in caplog.text
    assert c.stats()["program"]["misses"] == 1
    path.mkdir()
    assert Cache(tmp_path / "c").get_or_create("program", K, lambda: b"rebuilt", label={"model": "toy"}) == b"rebuilt"
    assert path.is_file() and Cache(tmp_path / "c").get("program", K) == b"rebuilt"


def test_a_directory_that_is_not_empty_is_named_by_the_write_and_kept(tmp_path, caplog):
    c = Cache(tmp_path / "c")
    path = c.path("program", K)
    path.mkdir(parents=True)
    (path / "kept").write_text("a user's file")
    with caplog.at_level(logging.WARNING, logger="amk.cache"):
        assert c.get("program", K) is None  # a miss, not a cache directory it cannot use
    assert str(path) in caplog.text
    with pytest.raises(cache_mod.CacheDirError) as e:
        c.get_or_create("program", K, lambda: b"rebuilt", label={"model": "toy"})
    msg = str(e.value)
    assert str(path) in msg and "directory" in msg and "writable directory" not in msg, msg
    assert (path / "kept").read_text() == "a user's file"
    assert not c.label_path("program", K).exists()  # no label for an entry that could not be written


def test_the_cli_names_a_directory_in_an_entrys_place_and_clear_reports_it(capsys, tmp_path):
    code, _ = _compile(capsys, tmp_path)
    assert code == 0
    entry = _program_entry(tmp_path)
    entry.unlink()
    entry.mkdir()
    code, out = _compile(capsys, tmp_path)  # an empty one: replaced by the entry built again
    assert code == 0 and entry.is_file(), out
    entry.unlink()
    entry.mkdir()
    (entry / "kept").write_text("a user's file")
    code, out = _compile(capsys, tmp_path)
    assert code == 2 and out["error_type"] == "usage" and str(entry) in out["error"], out
    assert "writable directory" not in out["error"] and "directory" in out["error"], out
    code, out = cli_json(capsys, "cache", "clear")
    assert code == 3 and out["error_type"] == "environment" and str(entry) in out["error"], out
    assert (entry / "kept").read_text() == "a user's file"
    assert not entry.with_suffix(".label.json").exists() and not entry.with_suffix(".lock").exists()
    (entry / "kept").unlink()
    code, out = cli_json(capsys, "cache", "clear")  # empty now: removed
    assert code == 0 and not entry.exists(), out


# ---- an unusable cache directory: one line on stderr ----------------------------------------------------------------


@pytest.mark.parametrize("json_flag", [True, False], ids=["json", "text"])
def test_an_unusable_cache_dir_is_one_line_on_stderr(capsys, tmp_path, monkeypatch, json_flag):
    (tmp_path / "a_file").write_text("")
    monkeypatch.setenv("AMK_CACHE_DIR", str(tmp_path / "a_file"))
    code = main([*(["--json"] if json_flag else []), "compile", "--model", "toy", "--out", str(tmp_path / "p.json")])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == 2
    assert not any("cache stats not saved" in ln for ln in err), err
    if not json_flag:
        assert len(err) == 1 and err[0].startswith("amk: error: AMK_CACHE_DIR: "), err


# ---- '-' names no output file ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, flag", [
    (["compile", "--model", "toy", "--out", "-"], "--out"),
    (["verify", "--model", "toy", "--out", "-"], "--out"),
    (["report", "--out-dir", "-"], "--out-dir"),
    (["loop", "--model", "toy", "--budget", "1", "--results", "-"], "--results"),
    (["loop", "--model", "toy", "--budget", "1", "--corpus", "-"], "--corpus"),
], ids=["compile", "verify", "report", "loop results", "loop corpus"])
def test_a_dash_is_refused_as_an_output_naming_its_flag(capsys, tmp_path, monkeypatch, argv, flag):
    import amk.harness.evaluate as ev

    def never(*a, **kw):
        raise AssertionError("ran before refusing the output flag")

    monkeypatch.setattr(ev, "evaluate", never)
    monkeypatch.setattr(ev, "build_program", never)
    if argv[0] == "report":
        _results(Path("results.tsv"))
    code, out = cli_json(capsys, *argv)
    assert code == 2 and out["error_type"] == "usage" and out["error"].startswith(f"{flag} '-'"), out
    assert not Path("-").exists()


# ---- last_run_stats.json of the wrong types ---------------------------------------------------------------------------


@pytest.mark.parametrize("text", ['{"program": 5}', '{"program": {"hits": "x"}}', '{"program": {"hits": true}}',
                                  '{"program": {"hits": -1}}', '{"program": {"hits": 1.5}}', '{"program": null}'])
def test_last_run_stats_of_the_wrong_types_are_left_out_with_a_warning(capsys, tmp_path, text):
    root = tmp_path / "cache"
    root.mkdir()
    stats = root / "last_run_stats.json"
    stats.write_text(text)
    code = main(["--json", "cache", "stats"])
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert code == 0 and out["last_run"] is None, out
    assert str(stats) in captured.err, captured.err
    assert main(["cache", "stats"]) == 0
    assert "last run" not in capsys.readouterr().out


def test_last_run_stats_as_saved_are_read(tmp_path):
    c = Cache(tmp_path)
    c.get("program", K)
    c.save_stats()
    assert cache_mod.last_run_stats(tmp_path) == c.stats()


# ---- report: a read-only plot, a foreign header ----------------------------------------------------------------------


def _results(path: Path) -> Path:
    for trial in (1, 2):
        append_result(path, ResultRow(model="toy", gpu="cpu-sim", schedule_id=f"{trial:012x}",
                                      status=Status.KEEP if trial == 1 else Status.DISCARD, correct=True,
                                      latency_us=50.0 + trial, kind="predicted", program_fingerprint=f"{trial:016x}",
                                      dtype="fp32", max_seq=512))
    return path


def test_report_refuses_a_read_only_plot_naming_it(capsys, tmp_path, monkeypatch):
    res = _results(tmp_path / "r.tsv")
    out_dir = tmp_path / "plots"
    code, out = cli_json(capsys, "report", "--results", str(res), "--out-dir", str(out_dir))
    assert code == 0 and len(out["plots"]) == 2, out
    plot = out_dir / "search.png"
    before = plot.read_bytes()
    os.utime(plot, (0, 0))
    # os.access as a read-only file answers it (tests may run as root, for whom chmod changes nothing)
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p) == str(plot.resolve()) and mode & os.W_OK
                        else real(p, mode, **kw))
    code, out = cli_json(capsys, "report", "--results", str(res), "--out-dir", str(out_dir))
    assert code == 2 and out["error_type"] == "usage" and out["error"].startswith("--out-dir "), out
    assert "search.png" in out["error"] and "not writable" in out["error"], out
    assert plot.read_bytes() == before and plot.stat().st_mtime == 0


def test_report_leads_a_foreign_header_with_results(capsys, tmp_path):
    res = tmp_path / "extrahdr.tsv"
    res.write_text("foo\tbar\n1\t2\n")
    code, out = cli_json(capsys, "report", "--results", str(res), "--no-plots")
    assert code == 2 and out["error_type"] == "usage", out
    assert out["error"].startswith(f"--results: {res}: header "), out
