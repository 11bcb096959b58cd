"""A model argument of the wrong type is refused by name, with a message that names what the call takes:
evaluate, propose and loop take an amk.Model as well as a name or a checkpoint directory; load_model does not."""

from __future__ import annotations

import pytest

import amk
from amk.schedule.errors import ArgumentError

TAKES_MODEL = {
    "evaluate": lambda m, tmp: amk.evaluate(m, "cpu-sim", {}, device="cpu"),
    "propose": lambda m, tmp: amk.propose(m, "cpu-sim", corpus=tmp / "c.jsonl"),
    "loop": lambda m, tmp: amk.loop(m, "cpu-sim", budget=1, device="cpu", results=tmp / "r.tsv",
                                    corpus=tmp / "c.jsonl"),
}


@pytest.mark.parametrize("call", sorted(TAKES_MODEL))
@pytest.mark.parametrize("bad", [None, 3, b"toy", ["toy"]])
def test_a_call_that_takes_a_model_says_so(call, bad, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ArgumentError) as e:
        TAKES_MODEL[call](bad, tmp_path)
    assert e.value.argument == "model"
    assert "a model name, a checkpoint directory (a str or path) or an amk.Model" in str(e.value)
    assert type(bad).__name__ in str(e.value)


def test_load_model_names_no_model_among_what_it_takes():
    with pytest.raises(ArgumentError) as e:
        amk.load_model(3)
    assert e.value.argument == "name_or_path" and "amk.Model" not in str(e.value)
    assert "a model name or a checkpoint directory (a str or path)" in str(e.value)
