"""HARNESS.md is a contract, so it is tested: its examples run as written, its knob table is the search space,
its exit codes are the CLI's, and the measurement history it points to cites files that exist."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from amk.cli import build_parser
from amk.harness.commands import ExitCode
from amk.schedule.config import value_text
from amk.schedule.space import search_space

ROOT = Path(__file__).resolve().parents[1]
HARNESS = (ROOT / "HARNESS.md").read_text()
BIN = os.path.dirname(sys.executable)


def blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```$", HARNESS, flags=re.S | re.M)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    # one cache for every example: the eager references of the toy model are computed once
    return {**os.environ, "AMK_CACHE_DIR": str(tmp_path_factory.mktemp("amk_cache")),
            "PATH": BIN + os.pathsep + os.environ.get("PATH", "")}


def test_the_cli_example_runs_as_written(tmp_path, env):
    (script,) = blocks("bash")
    p = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=900)
    assert p.returncode == 0, (p.stdout[-2000:], p.stderr[-4000:])
    proposal, cand = (json.loads((tmp_path / f).read_text()) for f in ("proposal.json", "candidate.json"))
    assert cand["matvec"]["lm_head"]["rows_per_task"] != proposal["config"]["matvec"]["lm_head"]["rows_per_task"]
    verdict = json.loads((tmp_path / "candidate.verdict.json").read_text())
    assert verdict["valid"] and verdict["schedule_id"] != proposal["schedule_id"]  # the edit was not a no-op
    assert "exit 0" in p.stdout and ("keep" in p.stdout or "revert" in p.stdout)
    assert json.loads((tmp_path / "verify_result.json").read_text())["passed"]
    rows = (tmp_path / "results.tsv").read_text().splitlines()
    assert len(rows) == 1 + 2 + 1  # the header, then the trials of `amk loop --budget 2` and of its --resume
    assert all((tmp_path / "report" / f).stat().st_size > 1000 for f in ("search.png", "latency_vs_floor.png"))


@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_each_python_example_runs_as_written(tmp_path, env, index):
    code = blocks("python")[index]
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=900)
    assert p.returncode == 0, (code[:300], p.stdout[-2000:], p.stderr[-4000:])


def test_json_examples_parse():
    found = blocks("json")
    assert found and all(isinstance(json.loads(b), dict) for b in found)


def _expand(cell: str) -> list[str]:
    m = re.fullmatch(r"(.*)\{(.*)\}(.*)", cell)
    return [m.group(1) + x + m.group(3) for x in m.group(2).split(",")] if m else [cell]


def _table_rows() -> list[list[str]]:
    section = HARNESS.split("## 1.")[1].split("## 2.")[0]
    return [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in section.splitlines()
            if ln.startswith("| `")]


def test_the_knob_table_is_the_search_space():
    knobs = {k.path: k for k in search_space("h100-sxm")}
    seen = []
    for cells in _table_rows():
        paths = _expand(cells[0].strip("`"))
        defaults = cells[2].split(" / ") if len(paths) > 1 and " / " in cells[2] else [cells[2]] * len(paths)
        searched = cells[3].split(" / ") if " / " in cells[3] else [cells[3]] * len(paths)
        for path, default, search in zip(paths, defaults, searched, strict=True):
            k = knobs.get(path)
            assert k is not None, f"HARNESS.md lists {path}, which is not a knob"
            assert cells[1] == k.type.value, (path, cells[1])
            assert default == k.default_text, (path, default, k.default_text)
            listed = [] if search == "not searched" else [v.strip() for v in search.split("(")[0].split(",")]
            assert listed == [("derived" if v is None else value_text(v)) for v in k.search], (path, listed, k.search)
            seen.append(path)
    assert sorted(seen) == sorted(knobs), set(knobs) ^ set(seen)


def test_the_knob_table_holds_no_measurement_history():
    # single runs' figures live in bench/HISTORY.md, with their result files
    for cells in _table_rows():
        assert "bench/results" not in cells[-1] and not re.search(r"\d+ vs \d+ us", cells[-1]), cells[0]


def test_the_history_cites_result_files_that_exist():
    history = (ROOT / "bench" / "HISTORY.md").read_text()
    cited = re.findall(r"`(bench/results/[^`]+)`", history)
    assert len(cited) >= 8
    for path in cited:
        assert list(ROOT.glob(path)), f"bench/HISTORY.md cites {path}, which does not exist"


def test_the_exit_code_table_is_the_clis():
    section = HARNESS.split("## 4.")[1].split("## 5.")[0]
    rows = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in section.splitlines()
            if re.match(r"\| \d+ \|", ln)]
    assert {int(r[0]) for r in rows} == {int(c) for c in ExitCode}
    documented = {t for r in rows for t in re.findall(r"`(\w+)`", r[1])}
    assert {"usage", "unverified", "environment", "internal", "interrupted"} <= documented
    assert "amk.generate" not in HARNESS  # it exists: no exit code for its absence


def test_the_readme_lists_every_subcommand():
    readme = (ROOT / "README.md").read_text()
    listed = re.search(r"`amk --help`: `([^`]+)`", readme).group(1).split()
    action = next(a for a in build_parser()._actions if hasattr(a, "choices") and isinstance(a.choices, dict))
    assert sorted(listed) == sorted(action.choices)


def test_examples_run_in_order_of_the_sections():
    # the contract's sections keep their numbers: other documents and tests cite "HARNESS.md section 4"
    numbers = [int(n) for n in re.findall(r"^## (\d+)\.", HARNESS, flags=re.M)]
    assert numbers == list(itertools.islice(itertools.count(1), len(numbers)))
