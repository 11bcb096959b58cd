"""Running the `amk` CLI in-process in tests."""

from __future__ import annotations

import json

from amk.cli import main


def cli_json(capsys, *argv) -> tuple[int, dict]:
    """main() in-process with --json: (exit code, the one JSON object it printed on stdout)."""
    code = main(["--json", *argv])
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert len(lines) == 1, out[-2000:]
    obj = json.loads(lines[0])
    assert obj["exit_code"] == code
    return code, obj


def cli_json_err(capsys, *argv) -> tuple[int, dict, str]:
    """main() in-process with --json: (exit code, the last JSON line on stdout, stderr), for commands whose
    stdout may hold more than the one object (progress lines of the dependencies)."""
    code = main(["--json", *argv])
    cap = capsys.readouterr()
    return code, json.loads(cap.out.strip().splitlines()[-1]), cap.err
