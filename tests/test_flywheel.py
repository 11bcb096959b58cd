"""flywheel: results.tsv and corpus.jsonl formats, locked whole-line appends across processes, the prior."""

from __future__ import annotations

import json
import multiprocessing as mp
import random

import pytest

from amk.flywheel import (
    COLUMNS,
    CorpusEntry,
    Prior,
    ResultRow,
    Status,
    append_entry,
    append_result,
    best_entry,
    load_corpus,
    load_results,
    read_rows,
)
from amk.flywheel.results import HEADER, LEGACY_COLUMNS, PRE_CONTEXT_COLUMNS, ResultsFormatError
from amk.schedule.config import ScheduleConfig
from amk.schedule.space import neighbours, search_space

EXPECTED_COLUMNS = ("trial", "time", "model", "gpu", "schedule_id", "status", "correct", "latency_us", "kind",
                    "pct_of_floor", "speedup", "description", "program_fingerprint", "predicted_us", "spread_us",
                    "dtype", "max_seq")


def _row(i: int, **kw) -> ResultRow:
    base = dict(model="toy", gpu="cpu-sim", schedule_id=f"{i:012x}", status=Status.KEEP, correct=True,
                latency_us=10.0 + i, kind="predicted", pct_of_floor=50.0, speedup=1.0, description=f"row {i}")
    base.update(kw)
    return ResultRow(**base)


def _entry(i: int, latency=10.0, kind="predicted", gpu="cpu-sim", change=(), improvement=None) -> CorpusEntry:
    return CorpusEntry(model="toy", gpu=gpu, config={}, verdict={"latency_us": latency, "latency_kind": kind,
                                                                 "correct": True},
                       environment={"python": "3"}, time="t", change=tuple(change), improvement=improvement)


def test_results_columns_are_fixed_and_documented():
    assert COLUMNS == EXPECTED_COLUMNS


def test_results_roundtrip_with_pandas(tmp_path):
    path = tmp_path / "results.tsv"
    append_result(path, _row(1))
    append_result(path, _row(2, status=Status.FAIL, correct=False, latency_us=None, kind=None, pct_of_floor=None,
                             speedup=None, description="tab\there\nnewline"))
    append_result(path, _row(3, status=Status.CRASH, correct=None, latency_us=float("nan")))
    text = path.read_text()
    assert text.startswith(HEADER) and text.count(HEADER) == 1
    assert all(line.count("\t") == len(COLUMNS) - 1 for line in text.splitlines())
    df = load_results(path)
    assert list(df.columns) == list(EXPECTED_COLUMNS)
    assert df["trial"].tolist() == [1, 2, 3]
    assert df["latency_us"].iloc[0] == 11.0 and df["latency_us"].isna().tolist() == [False, True, True]
    assert df["correct"].iloc[0] and not df["correct"].iloc[1] and df["correct"].isna().iloc[2]
    assert df["status"].tolist() == ["keep", "fail", "crash"]
    assert df["description"].iloc[1] == "tab here newline"


def test_results_rows_carry_their_dtype_and_max_seq(tmp_path):
    path = tmp_path / "results.tsv"
    append_result(path, _row(1, dtype="bf16", max_seq=2048))
    append_result(path, _row(2, dtype="fp32", max_seq=64))
    assert path.read_text().splitlines()[1].endswith("\tbf16\t2048")
    assert [(r["dtype"], r["max_seq"]) for r in read_rows(path)] == [("bf16", "2048"), ("fp32", "64")]
    df = load_results(path)
    assert df["dtype"].tolist() == ["bf16", "fp32"] and str(df["max_seq"].dtype) == "Int64"
    assert df["max_seq"].tolist() == [2048, 64]


def test_a_config_tried_at_another_dtype_or_context_is_still_to_try(tmp_path):
    from amk.flywheel.claims import snapshot

    path = tmp_path / "results.tsv"
    for i, (sid, dtype, seq) in enumerate([("a" * 12, "bf16", 2048), ("b" * 12, "fp32", 64),
                                           ("c" * 12, "fp32", 2048)], 1):
        append_result(path, _row(i, dtype=dtype, max_seq=seq, schedule_id=sid))
    model, gpu = _row(1).model, _row(1).gpu
    assert snapshot(path, model, gpu).schedule_ids == {"a" * 12, "b" * 12, "c" * 12}
    assert snapshot(path, model, gpu, "fp32", 2048).schedule_ids == {"c" * 12}
    assert snapshot(path, model, gpu, "bf16", 2048).schedule_ids == {"a" * 12}


def test_a_results_row_refuses_a_max_seq_no_reader_would_take():
    from amk.schedule.errors import ArgumentError

    for bad in (0, -1, 2.5, "64", True):
        with pytest.raises(ArgumentError) as e:
            _row(1, max_seq=bad)
        assert e.value.argument == "max_seq" and repr(bad) in str(e.value)


def test_a_hand_edited_max_seq_is_skipped_with_a_warning(tmp_path, caplog):
    import logging

    path = tmp_path / "results.tsv"
    for i, seq in enumerate(("64", "abc", "0", "-5", ""), start=1):
        append_result(path, _row(i, dtype="fp32"))
        text = path.read_text()
        path.write_text(text[:-1] + seq + "\n")  # the row's last cell, max_seq, as a hand edit left it
    with caplog.at_level(logging.WARNING, logger="amk.flywheel"):
        rows = read_rows(path)
    assert [(r["trial"], r["max_seq"]) for r in rows] == [("1", "64"), ("5", "")]
    assert caplog.text.count("column max_seq") == 3 and "not a positive integer" in caplog.text


def test_a_dtype_of_another_spelling_is_refused_when_written_and_skipped_when_read(tmp_path, caplog):
    import logging

    from amk.schedule.errors import ArgumentError

    with pytest.raises(ArgumentError) as e:
        _row(1, dtype="BF16")
    assert e.value.argument == "dtype" and "'BF16'" in str(e.value)
    path = tmp_path / "results.tsv"
    for i, dtype in enumerate(("bf16", "BF16", "bfloat16"), start=1):
        append_result(path, _row(i, dtype="bf16", max_seq=64))
        text = path.read_text()
        path.write_text(text[: text.rindex("bf16\t64")] + dtype + "\t64\n")  # the dtype cell as a hand edit left it
    with caplog.at_level(logging.WARNING, logger="amk.flywheel"):
        rows = read_rows(path)
    assert [(r["trial"], r["dtype"]) for r in rows] == [("1", "bf16")]
    assert caplog.text.count("column dtype") == 2


@pytest.mark.parametrize("columns", [LEGACY_COLUMNS, PRE_CONTEXT_COLUMNS], ids=["12-columns", "15-columns"])
def test_an_older_results_file_is_read_and_resumed_in_its_own_columns(tmp_path, columns):
    path = tmp_path / "results.tsv"
    old = ["1", "2026-11-22T00:32:00Z", "toy", "cpu-sim", "abc", "keep", "true", "10.0", "predicted", "50", "",
           "base", "e" * 16, "9.5", "0.25"][:len(columns)]
    path.write_text("\t".join(columns) + "\n" + "\t".join(old) + "\n")
    append_result(path, _row(2, program_fingerprint="f" * 16, dtype="bf16", max_seq=64))
    lines = path.read_text().splitlines()
    assert lines[0] == "\t".join(columns) and len(lines) == 3  # its header, one row appended
    assert all(line.count("\t") == len(columns) - 1 for line in lines)  # in its own columns
    assert "bf16" not in lines[2] and not lines[2].endswith("64")
    rows = read_rows(path)
    assert [r["trial"] for r in rows] == ["1", "2"]
    kept = "program_fingerprint" in columns  # a 15-column file holds the fingerprint, a 12-column one does not
    assert [r["program_fingerprint"] for r in rows] == (["e" * 16, "f" * 16] if kept else ["", ""])
    assert all(r["dtype"] == "" and r["max_seq"] == "" for r in rows)  # the file holds neither
    df = load_results(path)
    assert df["latency_us"].tolist() == [10.0, 12.0] and df["max_seq"].isna().all()


def test_old_corpus_lines_read_as_kept_records(tmp_path):
    from amk.flywheel.records import load_records, records_frame
    from amk.schedule.config import schedule_id_of

    path = tmp_path / "corpus.jsonl"
    old = {"model": "toy", "gpu": "h200", "time": "t", "config": {}, "change": [], "improvement": None,
           "environment": {"git_commit": "abc"}, "verdict": {"latency_us": 9.0, "latency_kind": "measured-gpu",
                                                             "correct": True, "dtype": "bf16",
                                                             "program_fingerprint": "p" * 16,
                                                             "schedule_id": schedule_id_of({}),
                                                             "cost": {"features": {"mem_us": 1.0, "tasks": 2,
                                                                                   "waits": 3}}}}
    path.write_text(json.dumps(old) + "\n" + "[1, 2]\n")  # a second, foreign line is skipped
    (r,) = load_records(path)
    assert r.kept and r.measured and r.dtype == "bf16" and r.program_fingerprint == "p" * 16
    assert r.features == {"mem_us": 1.0, "tasks": 2, "waits": 3} and r.commit == "abc"
    df = records_frame(path)
    assert df["latency_us"].tolist() == [9.0] and df["kept"].tolist() == [True]


def test_results_refuses_a_foreign_header(tmp_path):
    path = tmp_path / "results.tsv"
    path.write_text("a\tb\n1\t2\n")
    with pytest.raises(ResultsFormatError):
        append_result(path, _row(1))
    with pytest.raises(ResultsFormatError):
        read_rows(path)


def test_a_binary_file_is_refused_in_a_short_ascii_message(tmp_path):
    path = tmp_path / "results.tsv"
    junk = bytes(b for b in range(256) if b not in b"\r\n") * 4 + b"\n"  # one line of every other byte
    path.write_bytes(junk)
    with pytest.raises(ResultsFormatError) as err:
        read_rows(path)
    msg = str(err.value)
    assert msg.isascii() and chr(27) not in msg and len(msg) < 600 and "characters)" in msg
    assert path.read_bytes() == junk
    path.write_text("\U0001f600" * 80 + "\n")  # 80 characters that escape to 10 each
    with pytest.raises(ResultsFormatError) as err:
        read_rows(path)
    assert len(str(err.value)) < 600 and "(80 characters)" in str(err.value)


def test_a_header_saved_without_its_newline_is_a_file_of_no_rows(tmp_path):
    # an editor that emptied the file of rows kept its header and dropped the newline: the file reads as no
    # rows, and the next row starts a line of its own, in that header's columns (an older one here)
    path = tmp_path / "results.tsv"
    path.write_text("\t".join(PRE_CONTEXT_COLUMNS))
    assert read_rows(path) == []
    append_result(path, _row(1))
    lines = path.read_text().split("\n")
    assert lines[0] == "\t".join(PRE_CONTEXT_COLUMNS) and len(lines[1].split("\t")) == len(PRE_CONTEXT_COLUMNS)
    assert [r["trial"] for r in read_rows(path)] == ["1"]
    path.write_text(HEADER.strip() + "x")  # not a header: still refused, and left as it was
    with pytest.raises(ResultsFormatError):
        append_result(path, _row(2))
    assert path.read_text() == HEADER.strip() + "x"


def test_torn_lines_are_skipped_and_ended(tmp_path):
    res, cor = tmp_path / "results.tsv", tmp_path / "corpus.jsonl"
    append_result(res, _row(1))
    with open(res, "a") as f:
        f.write("2\t2026-01-01T00:00:00Z\ttoy\tcpu")  # a writer died mid-line
    assert len(read_rows(res)) == 1
    append_result(res, _row(3))
    rows = read_rows(res)
    assert [r["trial"] for r in rows] == ["1", "3"]  # the fragment is its own (skipped) line; its number stays its
    append_entry(cor, _entry(1))
    with open(cor, "a") as f:
        f.write('{"model": "toy", "gp')
    append_entry(cor, _entry(2))
    assert len(load_corpus(cor)) == 2


def test_a_torn_last_line_keeps_its_trial_number_and_its_loss_is_told(tmp_path, caplog):
    # without the claims file beside it (copied alone), the next row's number comes from the file: the torn
    # line's number is not given again, and the line, ended by that writer, is skipped with a warning
    import logging

    res = tmp_path / "results.tsv"
    for i in (1, 2):
        append_result(res, _row(i))
    whole = res.read_bytes()
    res.write_bytes(whole[:-40])  # trial 2 cut short by a crash
    with caplog.at_level(logging.WARNING, logger="amk.flywheel"):
        assert [r["trial"] for r in read_rows(res)] == ["1"]
        assert append_result(res, _row(3)).trial == 3
        rows = read_rows(res)
    assert [r["trial"] for r in rows] == ["1", "3"]
    # told once: as the last line without its newline, not again once the next row has ended it
    (warned,) = [r.getMessage() for r in caplog.records if "skipped trial row" in r.getMessage()]
    assert f"{res}:3: skipped trial row: no newline ends it" in warned


def test_a_row_appended_without_a_claim_never_takes_a_claimed_number(tmp_path):
    # a loop holds trial 2 for a row still to come; a row appended directly (no claim) must not take 2
    from amk.flywheel.claims import claim

    res = tmp_path / "results.tsv"
    append_result(res, _row(1))
    held = claim(res, "toy", "cpu-sim", "f" * 16, "a" * 12)
    assert held.trial == 2
    assert append_result(res, _row(3)).trial == 3
    append_result(res, _row(2, trial=held.trial))
    assert sorted(int(r["trial"]) for r in read_rows(res)) == [1, 2, 3]
    assert claim(res, "toy", "cpu-sim", "e" * 16, "b" * 12).trial == 4


def test_a_torn_trial_number_reserves_a_number_past_the_rows_before_it(tmp_path, caplog):
    # only "1" of trial 12 survived: 12 is still its number; a last line an editor left without its newline is
    # told at once, not only once the next row has ended it
    import logging

    res = tmp_path / "results.tsv"
    for i in range(1, 13):
        append_result(res, _row(i))
    data = res.read_bytes()
    cut = data.rstrip(b"\n").rfind(b"\n") + 2
    res.write_bytes(data[:cut])  # "...\n1"
    assert res.read_bytes().endswith(b"\n1")
    with caplog.at_level(logging.WARNING, logger="amk.flywheel"):
        assert len(read_rows(res)) == 11
    assert f"{res}:13: skipped trial row: no newline ends it" in caplog.text
    assert append_result(res, _row(13)).trial == 13
    res.write_bytes(data[:-1])  # a whole row, its newline gone
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="amk.flywheel"):
        assert len(read_rows(res)) == 11
    assert f"{res}:13: skipped trial row: no newline ends it" in caplog.text
    assert append_result(res, _row(13)).trial == 13


@pytest.mark.parametrize("cell", ["²", "1_0", "٣"])
def test_a_count_cell_of_other_than_ascii_digits_is_skipped_not_a_crash(tmp_path, caplog, cell):
    import logging

    res = tmp_path / "results.tsv"
    for i in (1, 2):
        append_result(res, _row(i))
    lines = res.read_text().splitlines(keepends=True)
    lines[2] = cell + lines[2][1:]
    res.write_text("".join(lines))
    with caplog.at_level(logging.WARNING, logger="amk.flywheel"):
        assert [r["trial"] for r in read_rows(res)] == ["1"]
    assert "column trial is" in caplog.text
    assert append_result(res, _row(3)).trial == 2  # the line's number is no count


def test_a_line_with_a_cell_missing_mid_file_is_skipped_with_a_warning(tmp_path, caplog):
    import logging

    res = tmp_path / "results.tsv"
    for i in (1, 2, 3):
        append_result(res, _row(i))
    lines = res.read_text().splitlines(keepends=True)
    lines[2] = lines[2][:30] + "\n"  # trial 2 edited down to its first cells
    res.write_text("".join(lines))
    with caplog.at_level(logging.WARNING, logger="amk.flywheel"):
        assert [r["trial"] for r in read_rows(res)] == ["1", "3"]
    assert f"{res}:3: skipped trial row:" in caplog.text
    assert append_result(res, _row(4)).trial == 4


def _writer(args):
    path_res, path_cor, worker, n = args
    from amk.flywheel import CorpusEntry, ResultRow, Status, append_entry, append_result

    for i in range(n):
        append_result(path_res, ResultRow(model="toy", gpu="cpu-sim", schedule_id=f"{worker:04d}{i:08d}",
                                          status=Status.DISCARD, correct=True, latency_us=1.0 + i,
                                          kind="predicted", description="x" * (i % 300)))
        append_entry(path_cor, CorpusEntry(model="toy", gpu="cpu-sim", config={"pad": "y" * (i * 37 % 5000)},
                                           verdict={"latency_us": 1.0, "worker": worker, "i": i}, environment={},
                                           time="t"))
    return n


def test_concurrent_appends_never_interleave_or_tear(tmp_path):
    res, cor = str(tmp_path / "results.tsv"), str(tmp_path / "corpus.jsonl")
    workers, n = 3, 150
    with mp.get_context("spawn").Pool(workers) as pool:
        assert sum(pool.map(_writer, [(res, cor, w, n) for w in range(workers)])) == workers * n
    lines = open(res).read().splitlines()
    assert lines[0] + "\n" == HEADER and HEADER not in "\n".join(lines[1:])
    rows = read_rows(res)
    assert len(rows) == workers * n
    assert sorted(int(r["trial"]) for r in rows) == list(range(1, workers * n + 1))  # unique, no gaps
    assert len({r["schedule_id"] for r in rows}) == workers * n
    raw = open(cor).read().splitlines()
    assert len(raw) == workers * n
    seen = {(d["verdict"]["worker"], d["verdict"]["i"]) for d in map(json.loads, raw)}
    assert len(seen) == workers * n


def test_best_entry_prefers_measured_and_correct():
    entries = [_entry(1, 5.0, "predicted"), _entry(2, 9.0, "measured-gpu"), _entry(3, 7.0, "measured-gpu"),
               _entry(4, None)]
    assert best_entry(entries).latency_us == 7.0
    assert best_entry([_entry(1, 5.0), _entry(2, 3.0)]).latency_us == 3.0
    assert best_entry([_entry(1, None)]) is None


def test_prior_weights_moves_by_past_gains():
    entries = [_entry(1, change=["matvec.lm_head.rows_per_task=64"], improvement=0.2),
               _entry(2, change=["matvec.lm_head.rows_per_task=64"], improvement=0.1),
               _entry(3, change=["matvec.down.rows_per_task=32"], improvement=-0.5),
               _entry(4, change=["threads_per_block=256"], improvement=0.3, gpu="h100-sxm")]
    prior = Prior.from_corpus(entries, gpu="cpu-sim", epsilon=0.0)
    assert prior.scores["matvec.lm_head.rows_per_task=64"] == pytest.approx(0.15)
    assert "threads_per_block=256" not in prior.scores  # another GPU's lesson
    moves = {m.description: m for m in neighbours(ScheduleConfig(), search_space("cpu-sim"))}
    good, bad = moves["matvec.lm_head.rows_per_task=64"], moves["matvec.down.rows_per_task=32"]
    unknown = moves["attention.kv_partitions=8"]
    assert prior.weight(good) > prior.weight(unknown) > prior.weight(bad) > 0
    rng = random.Random(0)
    picks = [prior.choose([good, unknown, bad], rng).description for _ in range(2000)]
    assert picks.count(good.description) > picks.count(unknown.description) > picks.count(bad.description) > 0
    explore = Prior(prior.scores, prior.counts, epsilon=1.0)  # epsilon: uniform
    picks = [explore.choose([good, bad], rng).description for _ in range(2000)]
    assert abs(picks.count(good.description) - 1000) < 150


def test_a_results_file_on_a_read_only_file_system_is_read(tmp_path, monkeypatch):
    # reading takes no write access: evaluate, propose and report read results.tsv and corpus.jsonl where they
    # cannot write them (a read-only mount, a file of another user)
    import errno
    import os

    res = tmp_path / "results.tsv"
    append_result(res, _row(1))
    append_result(res, _row(2))
    want = [r["schedule_id"] for r in read_rows(res)]
    real = os.open

    def read_only(path, flags, *a, **kw):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real(path, flags, *a, **kw)

    monkeypatch.setattr(os, "open", read_only)
    assert [r["schedule_id"] for r in read_rows(res)] == want and len(want) == 2
    with pytest.raises(OSError):  # the stand-in holds: an append is refused
        append_result(res, _row(3))
