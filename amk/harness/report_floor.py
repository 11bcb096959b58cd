"""The spec floor of each results row, for `amk report` (HARNESS.md section 7): no decode step reads a model's
weights faster than the GPU's datasheet bandwidth, so a row under that floor is a hand edit or a fault, never a best.

A row's floor is the one its program's tuning records name (their verdict's spec_floor_us). Where no record names
it (the corpus moved away, or another model's rows appended without their corpus), it is the floor `amk loop`
checks its rows against before its first trial: the weight bytes one step of the model's default program reads, at
the GPU's spec bandwidth, from the model's config alone (no weights are loaded). A model that cannot be read so (a
checkpoint directory since removed, a GPU name no target has) has no floor here, and the report says so rather than
passing its rows as checked."""

from __future__ import annotations

from amk.schedule.errors import AmkError

from .commands import counted

# the fewest bytes a weight takes in any dtype AMK runs: for rows that record no dtype (an older results file), the
# floor of that dtype is a lower bound on their run's floor, so a row under it is impossible whatever the run's dtype
LOWEST_FLOOR_DTYPE = "bf16"


def floors_of(df, floors) -> tuple:
    """(floor, exact): Series on df's index of the spec floor (us) each row is checked against (NaN where unknown)
    and whether it is the row's own run's floor (else a lower bound, or unknown). `floors`: None (none known), a dict
    program_fingerprint -> us (the floors the tuning records name), or row_floors()' frame."""
    import pandas as pd

    if isinstance(floors, pd.DataFrame):
        return floors["floor_us"].astype(float), floors["exact"].astype(bool)
    floor = df["program_fingerprint"].map(floors or {}).astype(float)
    return floor, floor.notna()


def under_floor(df, floors):
    """A boolean Series: the rows whose latency is under their spec floor (floors_of). No step runs that fast: a
    hand edit, never a best nor plotted as one. A row of no known floor is never under it."""
    return df["latency_us"] < floors_of(df, floors)[0]  # NaN on either side compares False


def model_floor(model: str, gpu: str, dtype: str) -> float:
    """The spec floor (us) of `model` (a built-in name or a checkpoint directory) on the GPU target `gpu` in `dtype`
    (fp32, fp16, bf16), as `amk loop` computes it (loop.py: Floor(step_weight_bytes of the default config's program,
    the target's spec bandwidth)), from the model's config alone (registry.model_shape). Raises what model_shape,
    get_target and lower_dims raise: UnknownModelError (a directory that is gone), CheckpointError,
    UnsupportedModelError, UnknownTargetError, LoweringError; ValueError for a target of no spec bandwidth (a GPU
    AMK does not know, whose floor is 0) or a GPU named `auto` (which would name this machine's GPU, not the row's)."""
    from amk.eval.roofline import Floor
    from amk.models.registry import model_shape
    from amk.schedule import ScheduleConfig, get_target
    from amk.schedule.lower import lower_dims
    from amk.schedule.opcodes import DType

    if gpu.strip().lower() == "auto":
        raise ValueError("the GPU is named `auto`, not a target")
    target = get_target(gpu)
    dims = model_shape(model)
    codes = {"fp32": DType.F32, "fp16": DType.F16, "bf16": DType.BF16}
    program = lower_dims(dims, codes[dtype], target, ScheduleConfig())  # every config reads the same weights a step
    floor = Floor(program.step_weight_bytes, target.spec_bandwidth_gbs, None).spec_us
    if not floor > 0:
        raise ValueError(f"GPU target {target.name!r} has no spec bandwidth")
    return floor


def row_floors(df, records: list):
    """For load_results()'s frame `df` and the tuning records: (a DataFrame on df's index with `floor_us`, the spec
    floor each row's latency is checked against (NaN where unknown), and `exact`, whether that floor is the row's
    own run's: False for a lower bound (a row of an older file, which records no dtype) and where unknown; the notes
    the report gives for rows whose floor is a lower bound or unknown). Rows without a latency need no floor and are
    left NaN. A model is read once a call, not cached across calls: a checkpoint saved again since is read anew."""
    import pandas as pd

    from amk.flywheel.corpus import spec_floor

    named = {r.program_fingerprint: f for r in records if r.program_fingerprint and (f := spec_floor(r))}
    floor = df["program_fingerprint"].map(named).astype(float)
    out = pd.DataFrame({"floor_us": floor, "exact": floor.notna()}, index=df.index)
    need = df["latency_us"].notna() & floor.isna()
    notes: list[str] = []
    for (model, gpu, dtype), rows in df[need].groupby(["model", "gpu", "dtype"], sort=True):
        exact = dtype in ("fp32", "fp16", "bf16")
        try:
            us = model_floor(model, gpu, dtype if exact else LOWEST_FLOOR_DTYPE)
        except (AmkError, ValueError, OSError) as e:
            why = " ".join(f"{type(e).__name__}: {e}".split())
            why = why if len(why) <= 200 else why[:197] + "..."
            notes.append(f"{model} on {gpu}{f' ({dtype})' if dtype else ''}: the spec floor of its rows is unknown (no "
                         f"tuning record names it, and the model cannot be read for it: {why}), so "
                         f"{counted(len(rows), 'row')} with a latency cannot be checked against it: a latency under it (a hand "
                         "edit) would rank as a best. Pass the corpus of `amk loop` that wrote them")
            continue
        out.loc[rows.index, "floor_us"] = us
        out.loc[rows.index, "exact"] = exact
        if not exact:
            notes.append(f"{model} on {gpu} (dtype not recorded): no tuning record names the spec floor of "
                         f"{counted(len(rows), 'row')}, which record no dtype: checked against {us:.2f} us, the floor of its "
                         f"{LOWEST_FLOOR_DTYPE} weights (no dtype reads fewer bytes), and shown with no pct_of_floor")
    return out, notes

