"""The Python face of the harness: propose -> edit -> evaluate -> keep or revert, and loop() to automate it.

    import amk
    p = amk.propose("toy", "cpu-sim")
    cfg = p["config"]; cfg["matvec"]["lm_head"]["rows_per_task"] = 128
    v = amk.evaluate("toy", "cpu-sim", cfg)
    summary = amk.loop("toy", "cpu-sim", budget=8)

HARNESS.md is the contract: every verdict field, the honesty rules, file formats and exit codes.
"""

from __future__ import annotations

from amk.flywheel.results import load_results
from amk.harness.evaluate import evaluate
from amk.harness.loop import LoopError, LoopInterrupted, StopReason, loop
from amk.harness.propose import propose
from amk.harness.schema import generate_schema, schema_path
from amk.harness.verdict import LatencyKind, parse_config

__all__ = ["LatencyKind", "LoopError", "LoopInterrupted", "StopReason", "evaluate", "generate_schema", "load_results", "loop",
           "parse_config", "propose", "schema_path"]
