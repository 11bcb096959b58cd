"""Property tests over generated schedules and mutated programs, on the real toy model under the adversarial
ReferenceVM (random order among ready SMs, NaN-poisoned scratch and unwritten KV slots, counter checks).

1. Random configs from the cpu-sim search space lower to programs that validate() accepts and that decode
   exactly what the default program decodes.
2. Mutated programs: whatever validate() accepts runs under several VM seeds without deadlock, counter
   mismatch or race (every seed gives the same bits) and, unless the mutation made two live values share
   memory (retarget_overlapping, see SEMANTICS_KEPT), to the reference logits; what it rejects is counted.
   `pytest -s` prints the counts per mutation kind.
3. Planted bugs, one per class of issue: validate() rejects each, and the adversarial VM shows each as
   NaN or wrong logits, an error or a deadlock for at least one seed.

Seeded (AMK_PROPERTY_SEED overrides the seed); >= 5,000 configs and mutants in all.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import random
import time
from dataclasses import dataclass

import pytest
import torch
from _schedules import CPU_SMS, CPU_TARGET, clone, load, make_scenario, plant_cycle, renumber, vm_step

from amk.eval.cases import CaseInputs, eager_decode
from amk.schedule import lower
from amk.schedule.config import EXPLICIT_MAP_KINDS, ScheduleConfig, with_value
from amk.schedule.errors import DeadlockError
from amk.schedule.opcodes import NO_BUFFER, Epilogue
from amk.schedule.program import BufferKind, Region, Wait
from amk.schedule.space import random_config, search_space
from amk.schedule.validate import IssueKind, validate
from amk.vm.weights import pack_weights

SEED = int(os.environ.get("AMK_PROPERTY_SEED", "20261122"))
MAX_SEQ = 32
ATOL = 1e-5
N_CONFIGS = 1000
N_MUTANTS = 4200
MUTANT_VM_SEEDS = 3  # adversarial runs of each accepted mutant
PLANTED_VM_SEEDS = 64  # at most this many runs to see a planted bug
POOL_CONFIGS = 14  # random configs whose programs (with the default ones) are mutated


@dataclass
class World:
    model: object
    prog: object  # the default program
    weights: dict
    weight_layout: dict
    scenarios: list
    refs: list  # (logits, next token) of the default program per scenario


@pytest.fixture(scope="module")
def world() -> World:
    model = load("toy")
    prog = lower(model, CPU_TARGET, None, MAX_SEQ)
    weights = pack_weights(model.eager, prog)
    c = prog.constants
    scenarios = [make_scenario(c, 0, 11, seed=1), make_scenario(c, 9, 203, seed=2),
                 make_scenario(c, MAX_SEQ - 1, 7, seed=3)]
    refs = [vm_step(prog, weights, s, seed=0, adversarial=False) for s in scenarios]
    for s, (logits, nxt) in zip(scenarios, refs):
        assert torch.isfinite(logits).all() and nxt == int(torch.argmax(logits))
        # the reference is the model: eager transformers agrees to fp32 rounding
        eager, _ = eager_decode(model.eager, CaseInputs(s.k, s.v, [s.token]))
        assert torch.allclose(logits, eager[0], atol=1e-4, rtol=1e-4), float((logits - eager[0]).abs().max())
    layout = _weight_layout(prog)
    return World(model, prog, weights, layout, scenarios, refs)


def _weight_layout(prog) -> dict:
    return {b.id: (b.name, b.numel) for b in prog.buffers if b.kind == BufferKind.WEIGHT}


def _run(world: World, prog, rng: random.Random) -> str | None:
    """One adversarial step in a random scenario: None when it matches the reference, else what went wrong."""
    k = rng.randrange(len(world.scenarios))
    seed = rng.randrange(2**31)
    try:
        logits, nxt = vm_step(prog, world.weights, world.scenarios[k], seed=seed)
    except Exception as e:  # noqa: BLE001 - any error is a finding
        return f"scenario {k} seed {seed}: {type(e).__name__}: {e}"[:400]
    ref, ref_tok = world.refs[k]
    if not torch.isfinite(logits).all():
        return f"scenario {k} seed {seed}: {int((~torch.isfinite(logits)).sum())} non-finite logits"
    if not torch.allclose(logits, ref, atol=ATOL):
        return f"scenario {k} seed {seed}: logits off by {float((logits - ref).abs().max()):.3g}"
    if nxt != ref_tok:
        return f"scenario {k} seed {seed}: next token {nxt}, the default program gives {ref_tok}"
    return None


# ---- 1. random configs ----------------------------------------------------------------------------------
def _draw_config(rng: random.Random, space) -> ScheduleConfig:
    """Every searched knob drawn from its search values; one draw in five places tasks by a random
    explicit map (SM ids of cpu-sim) instead."""
    cfg = random_config(space, rng)
    if rng.random() < 0.2:
        kinds = rng.sample(EXPLICIT_MAP_KINDS, rng.randint(0, 5))
        emap = {k: [rng.randrange(CPU_SMS) for _ in range(rng.randint(1, 4))] for k in kinds}
        cfg = with_value(with_value(cfg, "sm.assignment", "explicit"), "sm.explicit_map", emap)
    return cfg


def test_random_configs_validate_and_match_the_default_program(world):
    rng = random.Random(SEED)
    space = search_space(CPU_TARGET, group=world.model.dims.group)
    t0 = time.perf_counter()
    failures, fingerprints, sizes = [], set(), []
    for i in range(N_CONFIGS):
        cfg = _draw_config(rng, space)
        prog = lower(world.model, CPU_TARGET, cfg, MAX_SEQ)
        assert _weight_layout(prog) == world.weight_layout  # the packed weights fit every program
        r = validate(prog, CPU_TARGET)
        if not r.ok:
            failures.append(f"#{i} rejected: {r.first_message()} :: {cfg.canonical_json()}")
            continue
        bad = _run(world, prog, rng)
        if bad:
            failures.append(f"#{i} {bad} :: {cfg.canonical_json()}")
        fingerprints.add(prog.fingerprint())
        sizes.append(len(prog.tasks))
    dt = time.perf_counter() - t0
    print(f"\n[random configs] seed {SEED}: {N_CONFIGS} configs, {len(fingerprints)} distinct programs of "
          f"{min(sizes)}-{max(sizes)} tasks, {len(failures)} failures, {dt:.1f} s")
    assert not failures, f"{len(failures)} of {N_CONFIGS} configs failed:\n" + "\n".join(failures[:8])
    assert len(fingerprints) > 0.9 * N_CONFIGS


# ---- 2. mutations -------------------------------------------------------------------------------------
def _move(p, rng):
    src = rng.choice([s for s, q in enumerate(p.queues) if q])
    i = rng.randrange(len(p.queues[src]))
    tid = p.queues[src].pop(i)
    dst = rng.choice([s for s in range(len(p.queues)) if s != src])
    j = rng.randint(0, len(p.queues[dst]))
    p.queues[dst].insert(j, tid)
    renumber(p)
    return f"task {tid}: SM {src}[{i}] -> SM {dst}[{j}]"


def _swap(p, rng):
    s = rng.choice([s for s, q in enumerate(p.queues) if len(q) >= 2])
    q = p.queues[s]
    i = rng.randrange(len(q) - 1)
    j = i + 1 if rng.random() < 0.5 else rng.randrange(i + 1, len(q))  # neighbours half of the time
    q[i], q[j] = q[j], q[i]
    renumber(p)
    return f"SM {s}: swap positions {i} and {j} (tasks {q[j]}, {q[i]})"


def _pick_wait(p, rng):
    t = rng.choice([t for t in p.tasks if t.waits])
    k = rng.randrange(len(t.waits))
    return t, k, t.waits[k]


def _drop_wait(p, rng):
    t, k, w = _pick_wait(p, rng)
    t.waits = t.waits[:k] + t.waits[k + 1:]
    return f"task {t.id} ({t.kind}) no longer waits on counter {w.counter}"


def _lower_wait(p, rng):
    t, k, w = _pick_wait(p, rng)
    t.waits = t.waits[:k] + (Wait(w.counter, rng.randrange(w.count)),) + t.waits[k + 1:]
    return f"task {t.id} ({t.kind}) waits on counter {w.counter} for {t.waits[k].count} of {w.count}"


def _raise_wait(p, rng):
    t, k, w = _pick_wait(p, rng)
    t.waits = t.waits[:k] + (Wait(w.counter, w.count + rng.randint(1, 3)),) + t.waits[k + 1:]
    return f"task {t.id} ({t.kind}) waits on counter {w.counter} for {t.waits[k].count} of {w.count}"


def _remove_signal(p, rng):
    t = rng.choice([t for t in p.tasks if t.signals])
    k = rng.randrange(len(t.signals))
    c = t.signals[k]
    t.signals = t.signals[:k] + t.signals[k + 1:]
    return f"task {t.id} ({t.kind}) no longer signals counter {c}"


def _remove_signal_rebalanced(p, rng):
    """Remove a signal and keep the counters consistent: the counter declares one producer fewer and its
    waits count one fewer (a counter left with none is waited on by nobody)."""
    t = rng.choice([t for t in p.tasks if t.signals])
    k = rng.randrange(len(t.signals))
    c = t.signals[k]
    t.signals = t.signals[:k] + t.signals[k + 1:]
    old = p.counters[c].producers
    p.counters[c] = dataclasses.replace(p.counters[c], producers=old - 1)
    for u in p.tasks:
        if any(w.counter == c for w in u.waits):
            u.waits = tuple(Wait(w.counter, w.count - 1) if w.counter == c and w.count == old else w
                            for w in u.waits if not (w.counter == c and old == 1))
    return f"task {t.id} ({t.kind}) no longer signals counter {c}; it now counts {old - 1} producers"


def _relocate_params(params, v: int, w: int, off: int):
    """params with buffer `v` (and every offset into it) moved to `off` elements into buffer `w`."""
    names = {f.name for f in dataclasses.fields(params)}
    changes = {}
    for f in dataclasses.fields(params):
        x = getattr(params, f.name)
        if dataclasses.is_dataclass(x):
            sub = _relocate_params(x, v, w, off)
            if sub is not x:
                changes[f.name] = sub
        elif x == v and f.name + "_off" in names:
            changes[f.name] = w
            changes[f.name + "_off"] = getattr(params, f.name + "_off") + off
        elif x == v and f.name == "argmax":  # LOGITS: the (max, index) pair lives at 2 * argmax_slot
            changes[f.name] = w
            changes["argmax_slot"] = params.argmax_slot + off // 2
    return dataclasses.replace(params, **changes) if changes else params


def _join_touches(j, bid: int) -> bool:
    return any(r.buffer == bid for r in (*j.reads, *j.writes))


def _lifetime(p, bid: int) -> tuple[int, int]:
    stages = [t.stage for t in p.tasks if any(r.buffer == bid for r in (*t.reads, *t.writes))]
    stages += [p.tasks[j.tasks[0]].stage for j in p.joins if _join_touches(j, bid)]  # a join runs in its tasks
    return min(stages), max(stages)


def _retarget(p, rng, disjoint: bool):
    """Under scratch=none every activation has a buffer of its own: move one value, its writers' and its
    readers' params and regions alike, into another value's buffer at an even offset, so that it overlaps
    that value. `disjoint`: the two values' lifetimes (first to last stage touching them) do not overlap,
    so the program computes what it did whenever the writes are ordered after the earlier value's reads;
    else they overlap, and an ordered write may replace a value that a later stage still reads."""
    used = {r.buffer for t in p.tasks for r in (*t.reads, *t.writes)} | {r.buffer for j in p.joins
                                                                         for r in (*j.reads, *j.writes)}
    scratch = [b for b in p.buffers if b.kind == BufferKind.SCRATCH and b.arena == NO_BUFFER and b.id in used]
    life = {b.id: _lifetime(p, b.id) for b in scratch}
    rng.shuffle(scratch)
    for v in scratch:
        lv = life[v.id]
        hosts = [w for w in scratch if w.id != v.id and w.numel >= v.numel
                 and (life[w.id][1] < lv[0] or lv[1] < life[w.id][0]) == disjoint]
        if hosts:
            break
    else:
        return None
    w = rng.choice(hosts)
    off = 0 if rng.random() < 0.5 else rng.randrange(0, w.numel - v.numel + 1) // 2 * 2
    def moved(regions):
        return tuple(Region(w.id, r.start + off, r.length) if r.buffer == v.id else r for r in regions)

    joined = {tid for j in p.joins if _join_touches(j, v.id) for tid in j.tasks}  # their params name the output
    for t in p.tasks:
        if not (t.id in joined or any(r.buffer == v.id for r in (*t.reads, *t.writes))):
            continue
        t.params = _relocate_params(t.params, v.id, w.id, off)
        t.reads, t.writes = moved(t.reads), moved(t.writes)
    p.joins = [dataclasses.replace(j, reads=moved(j.reads), writes=moved(j.writes)) for j in p.joins]
    return (f"value {v.name} (stages {life[v.id][0]}-{life[v.id][1]}) moved to {w.name}[{off}:{off + v.numel}) "
            f"(stages {life[w.id][0]}-{life[w.id][1]})")


def _retarget_disjoint(p, rng):
    return _retarget(p, rng, disjoint=True)


def _retarget_overlapping(p, rng):
    return _retarget(p, rng, disjoint=False)


def _add_wait_on_later(p, rng):
    t = rng.choice(p.tasks)
    later = [u for u in p.tasks if u.id > t.id and u.signals]
    if not later:
        return None
    u = rng.choice(later)
    c = rng.choice(u.signals)
    t.waits = t.waits + (Wait(c, p.counters[c].producers),)
    return f"task {t.id} ({t.kind}) also waits on counter {c} of task {u.id} ({u.kind})"


# mutations after which an accepted program must still compute the reference logits; an accepted
# retarget_overlapping mutant need only be race-free (the same logits for every seed): validate() checks
# happens-before per element, and cannot tell an ordered write that replaces a live value from a new value
SEMANTICS_KEPT = frozenset({"move", "swap", "drop_wait", "lower_wait", "raise_wait", "remove_signal",
                            "remove_signal_rebalanced", "retarget_disjoint", "add_wait_on_later"})
MUTATIONS = {
    "move": _move,
    "swap": _swap,
    "drop_wait": _drop_wait,
    "lower_wait": _lower_wait,
    "raise_wait": _raise_wait,
    "remove_signal": _remove_signal,
    "remove_signal_rebalanced": _remove_signal_rebalanced,
    "retarget_disjoint": _retarget_disjoint,
    "retarget_overlapping": _retarget_overlapping,
    "add_wait_on_later": _add_wait_on_later,
}


def _pool(world: World, rng: random.Random) -> tuple[list, list]:
    """(arena programs, scratch=none programs): the default ones plus random configs of either kind."""
    space = search_space(CPU_TARGET, group=world.model.dims.group)
    arena = [world.prog]
    none = [lower(world.model, CPU_TARGET, with_value(ScheduleConfig(), "scratch", "none"), MAX_SEQ)]
    while len(arena) + len(none) < POOL_CONFIGS + 2:
        cfg = _draw_config(rng, space)
        if len(none) < len(arena):
            cfg = with_value(cfg, "scratch", "none")
        prog = lower(world.model, CPU_TARGET, cfg, MAX_SEQ)
        assert validate(prog, CPU_TARGET).ok
        (none if cfg.scratch.value == "none" else arena).append(prog)
    return arena, none


def _outcome(world: World, prog, k: int, seed: int):
    """What one adversarial step of `prog` in scenario k gives: ("ok", logits, token) or ("error", name, text)."""
    try:
        logits, nxt = vm_step(prog, world.weights, world.scenarios[k], seed=seed)
    except Exception as e:  # noqa: BLE001 - reported by the caller
        return "error", type(e).__name__, f"{e}"[:300]
    return "ok", logits, nxt


def _same(a, b) -> bool:
    if a[0] != b[0]:
        return False
    if a[0] == "error":
        return a[1:] == b[1:]
    return a[2] == b[2] and torch.equal(a[1].view(torch.int32), b[1].view(torch.int32))  # bit for bit, NaN too


def _check_mutant(world: World, prog, rng: random.Random, keeps_semantics: bool) -> tuple[str | None, bool]:
    """One scenario under MUTANT_VM_SEEDS adversarial seeds: (what went wrong or None, whether the outcome
    differs from the reference). No run may deadlock or miscount, and all must end alike, bit for bit (a
    race-free program is deterministic). Where the mutation keeps the program's meaning, each run must also
    give finite logits equal to the reference."""
    k = rng.randrange(len(world.scenarios))
    runs = []
    for _ in range(MUTANT_VM_SEEDS):
        seed = rng.randrange(2**31)
        out = _outcome(world, prog, k, seed)
        where = f"scenario {k} seed {seed}"
        if out[0] == "error" and (keeps_semantics or out[1] in ("DeadlockError", "CounterMismatchError")):
            return f"{where}: {out[1]}: {out[2]}", True
        if runs and not _same(out, runs[0][0]):
            return f"{where}: the outcome differs from seed {runs[0][1]}'s (a race): {out[0]} {out[2]}", True
        runs.append((out, seed))
    ref, ref_tok = world.refs[k]
    out = runs[0][0]
    differs = out[0] == "error" or not torch.allclose(out[1], ref, atol=ATOL) or out[2] != ref_tok
    if differs and keeps_semantics:
        bad = int((~torch.isfinite(out[1])).sum())
        return (f"scenario {k}: {bad} non-finite logits, the rest off the reference by "
                f"{float((out[1] - ref).nan_to_num().abs().max()):.3g}"), True
    return None, differs


def test_mutants_that_validate_run_correctly(world):
    rng = random.Random(SEED + 1)
    arena, none = _pool(world, rng)
    kinds = list(MUTATIONS)
    counts = {k: collections.Counter() for k in kinds}
    reasons = {k: collections.Counter() for k in kinds}
    failures = []
    t0 = time.perf_counter()
    n = 0
    while n < N_MUTANTS:
        kind = kinds[n % len(kinds)]
        base = rng.choice(none if kind.startswith("retarget") else arena + none)
        mutant = clone(base)
        what = MUTATIONS[kind](mutant, rng)
        if what is None:
            continue  # not applicable to this base: draw again
        n += 1
        r = validate(mutant, CPU_TARGET)
        if not r.ok:
            counts[kind]["rejected"] += 1
            reasons[kind][r.issues[0].kind.value] += 1
            continue
        counts[kind]["accepted"] += 1
        bad, differs = _check_mutant(world, mutant, rng, kind in SEMANTICS_KEPT)
        counts[kind]["accepted, other logits"] += differs
        if bad:
            failures.append(f"{kind}: {what} (schedule {base.meta['schedule_id']}): {bad}")
    dt = time.perf_counter() - t0
    print(f"\n[mutants] seed {SEED + 1}: {n} mutants of {len(arena) + len(none)} programs, {dt:.1f} s")
    print(f"  {'mutation':<26}{'accepted':>9}{'(other logits)':>15}{'rejected':>9}  rejected as")
    for k in kinds:
        why = ", ".join(f"{r} {c}" for r, c in reasons[k].most_common())
        c = counts[k]
        print(f"  {k:<26}{c['accepted']:>9}{c['accepted, other logits']:>15}{c['rejected']:>9}  {why}")
    assert not failures, f"{len(failures)} accepted mutants misbehaved:\n" + "\n".join(failures[:8])
    for k in ("move", "swap"):
        assert counts[k]["accepted"] and counts[k]["rejected"], (k, counts[k])
    # counts that no lowered program's counters can satisfy exactly are always caught
    for k in ("lower_wait", "raise_wait", "remove_signal"):
        assert counts[k]["accepted"] == 0, (k, counts[k])
    assert all(sum(counts[k].values()) > 0 for k in kinds)
    assert N_CONFIGS + n >= 5000


# ---- 3. planted bugs -------------------------------------------------------------------------------------
def _drop_waits_until(world, kind, expected, keep=lambda p, w: False):
    """The default program with one `kind` task's waits dropped (but those `keep` says), for the first such
    task whose loss validate() reports as `expected` for it."""
    for t in world.prog.tasks:
        if t.kind != kind or not t.waits:
            continue
        p = clone(world.prog)
        p.tasks[t.id].waits = tuple(w for w in t.waits if keep(p, w))
        if any(i.kind == expected and t.id in i.tasks for i in validate(p, CPU_TARGET).issues):
            return p
    raise AssertionError(f"dropping the waits of no {kind} task gives {expected}")


def _planted_race(world):
    return _drop_waits_until(world, "o", IssueKind.RACE_NO_WRITER)


def _planted_kv(world):
    return _drop_waits_until(world, "attention", IssueKind.KV_READ_BEFORE_APPEND,
                             keep=lambda p, w: not p.counters[w.counter].name.startswith("qkv"))


def _planted_clobber_dropped_wait(world):
    """A down task, its wait gone, may add into x (residual) while gate_up tasks, which recompute the norm
    from x, still read it (and may itself read act before it is written)."""
    return _drop_waits_until(world, "down", IssueKind.CLOBBER)


def _planted_clobber_write_over_live(world):
    """The first QKV task writes its q head over x, which the other QKV tasks of its stage still read."""
    p = clone(world.prog)
    t = next(t for t in p.tasks if t.kind == "qkv")
    arena = p.buffer("arena").id
    x = next(r for r in t.reads if r.buffer == arena and r.length == p.constants.hidden)
    q = t.writes[0]
    assert q.buffer == arena and t.params.epi.kind == Epilogue.ROPE_KV
    t.writes = (Region(arena, x.start, q.length),) + t.writes[1:]
    t.params = dataclasses.replace(t.params, epi=dataclasses.replace(t.params.epi, out_off=x.start))
    return p


def _planted_partial_wait(world):
    """Every LM-head task waits for one of the down projection's tasks instead of all of them."""
    p = clone(world.prog)
    for t in p.tasks:
        if t.kind == "lm_head":
            t.waits = tuple(Wait(w.counter, 1) for w in t.waits)
    assert any(p.counters[w.counter].producers > 1 for t in p.tasks if t.kind == "lm_head" for w in t.waits)
    return p


def _planted_queue_order(world):
    """On one SM, a consumer is queued ahead of the producer it waits for."""
    p = clone(world.prog)
    sm, i, j = next((sm, i, j) for sm, q in enumerate(p.queues) for i in range(len(q)) for j in range(i + 1, len(q))
                    if any(w.counter in p.tasks[q[i]].signals for w in p.tasks[q[j]].waits))
    p.queues[sm][i], p.queues[sm][j] = p.queues[sm][j], p.queues[sm][i]
    renumber(p)
    return p


def _planted_cycle(world):
    p = clone(world.prog)
    plant_cycle(p)
    return p


def _planted_unsatisfiable(world):
    p = clone(world.prog)
    t = next(t for t in p.tasks if t.kind == "lm_head")
    w = t.waits[0]
    t.waits = (Wait(w.counter, w.count + 1),) + t.waits[1:]
    return p


def _planted_removed_signal(world):
    p = clone(world.prog)
    t = next(t for t in p.tasks if t.kind == "down")
    t.signals = t.signals[1:]
    return p


# name -> (builder, issue validate() must report, the VM must deadlock rather than compute wrong logits)
PLANTED = {
    "race_no_writer": (_planted_race, IssueKind.RACE_NO_WRITER, False),
    "kv_read_before_append": (_planted_kv, IssueKind.KV_READ_BEFORE_APPEND, False),
    "clobber_dropped_wait": (_planted_clobber_dropped_wait, IssueKind.CLOBBER, False),
    "clobber_write_over_live_value": (_planted_clobber_write_over_live, IssueKind.CLOBBER, False),
    "partial_wait": (_planted_partial_wait, IssueKind.PARTIAL_WAIT, False),
    "queue_order": (_planted_queue_order, IssueKind.QUEUE_ORDER, True),
    "cycle": (_planted_cycle, IssueKind.CYCLE, True),
    "unsatisfiable_wait": (_planted_unsatisfiable, IssueKind.UNSATISFIABLE_WAIT, True),
    "removed_signal": (_planted_removed_signal, IssueKind.UNSATISFIABLE_WAIT, True),
}


@pytest.mark.parametrize("name", list(PLANTED))
def test_planted_bug_is_rejected_and_shows_in_the_adversarial_vm(world, name):
    build, expected, deadlocks = PLANTED[name]
    prog = build(world)
    r = validate(prog, CPU_TARGET)
    assert not r.ok and expected in r.kinds(), [(i.kind.value, i.message) for i in r.issues]
    rng = random.Random(SEED + 2)
    seen = collections.Counter()
    first = None
    for i in range(PLANTED_VM_SEEDS):
        k = i % len(world.scenarios)
        seed = rng.randrange(2**31)
        try:
            logits, _ = vm_step(prog, world.weights, world.scenarios[k], seed=seed)
        except DeadlockError:
            seen["deadlock"] += 1
        except Exception as e:  # noqa: BLE001 - e.g. the argmax of NaN pairs
            seen[type(e).__name__] += 1
        else:
            if not torch.isfinite(logits).all():
                seen["nan"] += 1
            elif not torch.allclose(logits, world.refs[k][0], atol=ATOL):
                seen["wrong"] += 1
            else:
                seen["correct"] += 1
                continue
        first = first if first is not None else i
        if deadlocks or sum(seen.values()) - seen["correct"] >= 3:
            break
    print(f"\n[planted {name}] {expected.value}: caught first at run {first}; {dict(seen)}")
    assert first is not None, f"{name}: {PLANTED_VM_SEEDS} adversarial runs all gave the reference logits"
    if deadlocks:
        assert seen["deadlock"] and first == 0, dict(seen)
