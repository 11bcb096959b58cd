"""The ranking model (amk/harness/search/model.py): the analytic price corrected by the records. A model with
no records of its own ranks by what other models' records of the GPU and dtype showed (transfer), its own
records outweigh those, and a model priced off as a whole moves no knob."""

from __future__ import annotations

import math

import pytest
from _synthetic import OPTIMUM, Synthetic, predictor

import amk
from amk.flywheel import read_rows
from amk.flywheel.records import MEASURED, TuningRecord, for_other_models
from amk.harness.search.model import fit_model, transfer_effects
from amk.schedule.config import ScheduleConfig
from amk.schedule.space import search_space

SPACE = search_space("h200", dtype="bf16")
DEFAULT = ScheduleConfig().to_dict()
PAGES = ScheduleConfig.from_dict({"pipeline": {"pages": 2}}).to_dict()
COMBINE = ScheduleConfig.from_dict({"attention": {"combine": "last_partition"}}).to_dict()


def record(model: str, config: dict, latency_us: float, predicted_us: float, gpu: str = "h200",
           dtype: str = "bf16") -> TuningRecord:
    return TuningRecord(model=model, gpu=gpu, config=config, verdict={"correct": True}, environment={},
                        time="2026-12-05T00:00:00Z", dtype=dtype, latency_us=latency_us, latency_kind=MEASURED,
                        predicted_latency_us=predicted_us)


def slow_pages(model: str, scale: float) -> list[TuningRecord]:
    """The analytic price says pages=2 gains 10%; the GPU shows it 1.5x slower (the shape of the H200 loops)."""
    return [record(model, DEFAULT, 1000 * scale, 1000 * scale), record(model, PAGES, 1500 * scale, 900 * scale),
            record(model, COMBINE, 990 * scale, 1000 * scale)]


def test_other_models_records_rank_a_value_they_measured_slow_behind_the_default():
    others = slow_pages("a", 1.0) + slow_pages("b", 0.7)
    cold = fit_model([], others, SPACE, MEASURED)
    warm = fit_model([], others, SPACE, MEASURED, others=others)
    # the target's own analytic prices: the default 800 us, pages=2 720 us
    assert cold.predict(PAGES, None, 720) < cold.predict(DEFAULT, None, 800)
    assert warm.predict(PAGES, None, 720) > 1.15 * warm.predict(DEFAULT, None, 800)  # shrunk from 1.5x by the ridge
    assert (warm.transfer_rows, warm.transfer_models) == (6, 2)
    assert warm.rows == 0 and warm.to_dict()["transfer_models"] == 2


def test_this_models_own_records_outweigh_what_other_models_showed():
    others = slow_pages("a", 1.0) + slow_pages("b", 0.7)
    own = [record("c", DEFAULT, 800, 800)] + [record("c", PAGES, 650, 720) for _ in range(4)]
    m = fit_model(own, others + own, SPACE, MEASURED, others=others)
    assert m.predict(PAGES, None, 720) < m.predict(DEFAULT, None, 800)
    assert m.rows == 5


def test_a_model_priced_off_as_a_whole_moves_no_knob():
    # model a runs 2x its analytic price on every config, b as priced: pages=2 is neutral on both
    others = [record("a", DEFAULT, 2000, 1000), record("a", PAGES, 2000, 1000),
              record("b", DEFAULT, 700, 700), record("b", PAGES, 700, 700)]
    effects, _, rows, models = transfer_effects(others, fit_model([], others, SPACE, MEASURED), MEASURED)
    assert (rows, models) == (4, 2)
    assert abs(effects["pipeline.pages=2"]) < 0.01


def test_a_record_priced_or_timed_as_nan_or_infinity_teaches_nothing():
    # a corpus line's features are JSON, where NaN and Infinity parse
    bad = [TuningRecord(**{**r.__dict__, "features": {"mem_us": math.nan, "tasks": 10, "waits": 2}})
           for r in slow_pages("c", 1.0)]
    bad += [record("d", PAGES, math.inf, 900), record("d", PAGES, 1500, math.nan)]
    others = slow_pages("a", 1.0) + bad
    m = fit_model([], others, SPACE, MEASURED, others=others)
    assert m.transfer_rows == 3 and all(math.isfinite(v) for v in m.effects.values())
    assert math.isfinite(m.predict(PAGES, None, 720))


def test_records_of_another_gpu_dtype_or_latency_kind_never_transfer(tmp_path):
    ck = tmp_path / "ck"
    ck.mkdir()
    mine = [record(str(ck), PAGES, 1500, 900), record(f"{tmp_path}/./ck/", PAGES, 1500, 900)]  # one model, two spellings
    foreign = [record("a", PAGES, 1500, 900, gpu="h100"), record("b", PAGES, 1500, 900, dtype="fp32")]
    kept = for_other_models(mine + foreign + [record("c", DEFAULT, 900, 900)], str(ck), "h200", "bf16")
    assert [r.model for r in kept] == ["c"]
    predicted = [record("d", PAGES, 1500, 900)]
    predicted = [TuningRecord(**{**r.__dict__, "latency_kind": "predicted"}) for r in predicted]
    m = fit_model([], [], SPACE, MEASURED, others=predicted)
    assert m.transfer_rows == 0 and m.effects == {}


@pytest.mark.parametrize("budget", [6])
def test_a_loop_on_a_new_model_ranks_by_the_corpus_of_another(tmp_path, budget):
    corpus, results = tmp_path / "c.jsonl", tmp_path / "r.tsv"
    amk.loop("toy-2L", "cpu-sim", budget=budget, device="cpu", results=results, corpus=corpus, seed=3,
             evaluate=Synthetic(3), predictor=predictor)
    s = amk.loop("toy", "cpu-sim", budget=2, device="cpu", results=tmp_path / "r2.tsv", corpus=corpus, seed=3,
                 evaluate=Synthetic(3), predictor=predictor)
    ranking = s["search"]["ranking_model"]
    assert ranking["transfer_models"] == 1
    assert ranking["transfer_rows"] >= budget - 1  # toy-2L's correct trials (one may fail verify)
    assert not math.isnan(ranking["analytic_slope"])


def test_a_new_model_tries_another_models_best_config_first(tmp_path):
    corpus = tmp_path / "c.jsonl"
    first = amk.loop("toy-2L", "cpu-sim", budget=20, device="cpu", results=tmp_path / "a.tsv", corpus=corpus, seed=1,
                     evaluate=Synthetic(1), predictor=predictor)
    assert first["incumbent"]["schedule_id"] == OPTIMUM.schedule_id  # three knobs away from the default
    s = amk.loop("toy", "cpu-sim", budget=4, device="cpu", results=tmp_path / "b.tsv", corpus=corpus, seed=1,
                 evaluate=Synthetic(1), predictor=predictor)
    rows = read_rows(tmp_path / "b.tsv")
    assert any(r["description"].startswith("transfer: ") for r in rows), [r["description"] for r in rows]
    assert s["incumbent"]["schedule_id"] == OPTIMUM.schedule_id
    # a third model: propose lists the two others' best configs, fastest first
    p = amk.propose("toy", "cpu-sim", corpus=tmp_path / "none.jsonl")
    assert p["others_best"] == []
    p = amk.propose("smollm2-135m", "cpu-sim", corpus=corpus)
    assert [b["schedule_id"] for b in p["others_best"]] == [OPTIMUM.schedule_id] * 2
    assert {b["model"] for b in p["others_best"]} == {"toy", "toy-2L"}
    lat = [b["latency_us"] for b in p["others_best"]]
    assert lat == sorted(lat) and any("others_best" in n for n in p["notes"])
