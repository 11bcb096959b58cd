"""amk.loop's callables and search settings are checked with its other arguments, before any file is opened: a
non-callable `should_stop`, `evaluate` or `predictor`, or a `settings` that is not a SearchSettings (a dict, or
one whose fields are out of range), is an ArgumentError naming it, never a TypeError after trial 1, a `crash`
row, or a run that stops as `exhausted` after its first trial. A dict names SearchSettings fields: it was used
as it was, an AttributeError after the first trial."""

from __future__ import annotations

import pytest

import amk
from amk.harness.search.policy import SearchSettings


@pytest.mark.parametrize("kw, argument", [
    ({"should_stop": 5}, "should_stop"),
    ({"evaluate": 5}, "evaluate"),  # was a `crash` row in results.tsv
    ({"predictor": "cost"}, "predictor"),
    ({"settings": [1]}, "settings"),
    ({"settings": {"measure_per_rnd": 2}}, "settings.measure_per_rnd"),
    ({"settings": {"measure_per_round": 0}}, "settings.measure_per_round"),
    ({"settings": SearchSettings(measure_per_round=0)}, "settings.measure_per_round"),  # stopped as `exhausted`
    ({"settings": SearchSettings(measure_per_round=2.5)}, "settings.measure_per_round"),
    ({"settings": SearchSettings(population=-5)}, "settings.population"),
    ({"settings": SearchSettings(epsilon=5.0)}, "settings.epsilon"),
    ({"settings": SearchSettings(epsilon=float("nan"))}, "settings.epsilon"),
    ({"settings": SearchSettings(parents=-1)}, "settings.parents"),
    ({"settings": SearchSettings(remeasure_every=0)}, "settings.remeasure_every"),
    ({"settings": SearchSettings(neighbours="no")}, "settings.neighbours"),
    ({"workers": 2, "budget": 2, "should_stop": lambda: False}, "should_stop"),  # Ray workers never called it
    ({"workers": 2, "budget": 2, "evaluate": lambda *a, **k: {}}, "evaluate"),
])
def test_loop_refuses_a_bad_callable_or_setting_before_opening_its_files(tmp_path, monkeypatch, kw, argument):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(amk.ArgumentError) as e:
        amk.loop("toy", "cpu-sim", **{"budget": 1, "results": "r.tsv", "corpus": "c.jsonl", **kw})
    assert e.value.argument == argument
    assert argument in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no results file, no corpus, no claims


@pytest.mark.parametrize("settings", [
    SearchSettings(population=4, measure_per_round=1, epsilon=0.0, parents=0, neighbours=False),
    {"population": 4, "measure_per_round": 1},  # was an AttributeError after trial 1
])
def test_loop_takes_good_settings(tmp_path, monkeypatch, settings):
    monkeypatch.chdir(tmp_path)
    summary = amk.loop("toy", "cpu-sim", budget=2, results="r.tsv", corpus="c.jsonl", settings=settings,
                       should_stop=lambda: False)
    assert summary["trials"] == 2
