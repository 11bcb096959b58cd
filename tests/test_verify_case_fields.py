"""A VerifyCase whose fields no run can use is a caller's mistake: amk.evaluate and amk.loop refuse it with an
ArgumentError naming `cases` and the field, before any model work (HARNESS section 2), where it used to come back
as an incorrect config (tokens=0: "stack expects a non-empty TensorList") or fill results.tsv with `fail` rows."""

from __future__ import annotations

import pytest

import amk
from amk.eval.cases import VerifyCase


def _no_model_work(*args, **kwargs):
    raise AssertionError("a model was loaded for a case that should have been refused first")


BAD_CASES = [
    (VerifyCase("zero", 0, 0), "cases[0].tokens", "0"),
    (VerifyCase("negative", -5, 2), "cases[0].prefix_len", "-5"),
    (VerifyCase("float", 1.5, 1), "cases[0].prefix_len", "1.5"),
    (VerifyCase("bool", True, 1), "cases[0].prefix_len", "True"),
    (VerifyCase("tokens", 0, 2.0), "cases[0].tokens", "2.0"),
    (VerifyCase("greedy", 0, 1, generate=-1), "cases[0].generate", "-1"),
    (VerifyCase("seed", 0, 1, seed=-1), "cases[0].seed", "-1"),
    (VerifyCase("big_seed", 0, 1, seed=2**63), "cases[0].seed", str(2**63)),
    (VerifyCase("", 0, 1), "cases[0].name", "''"),
    (VerifyCase(7, 0, 1), "cases[0].name", "7"),
    (VerifyCase("scaled", 0, 1, scaled_from=None), "cases[0].scaled_from", "None"),
]


@pytest.fixture
def no_model(tmp_path, monkeypatch):
    """Run in an empty directory, with loading a model an error."""
    import amk.models

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(amk.models, "load_model", _no_model_work)
    return tmp_path


@pytest.mark.parametrize("case, field, value", BAD_CASES)
def test_evaluate_refuses_a_bad_case_field_before_any_model_work(no_model, case, field, value):
    with pytest.raises(amk.ArgumentError) as e:
        amk.evaluate("toy", "cpu-sim", {}, cases=[case])
    assert e.value.argument == "cases"
    assert f"{field}:" in str(e.value) and value in str(e.value)


@pytest.mark.parametrize("case, field, value", BAD_CASES)
def test_loop_refuses_a_bad_case_field_before_opening_its_files(no_model, case, field, value):
    with pytest.raises(amk.ArgumentError) as e:
        amk.loop("toy", "cpu-sim", budget=2, results="r.tsv", corpus="c.jsonl", cases=[case])
    assert e.value.argument == "cases"
    assert f"{field}:" in str(e.value) and value in str(e.value)
    assert list(no_model.iterdir()) == []  # no results rows, no corpus


def test_the_first_bad_case_is_named_by_its_index(no_model):
    good = VerifyCase("pos0", 0, 1)
    with pytest.raises(amk.ArgumentError, match=r"cases\[2\]\.tokens: expected a positive integer, got 0"):
        amk.evaluate("toy", "cpu-sim", {}, cases=(good, good, VerifyCase("zero", 0, 0)))


def test_good_cases_at_their_bounds_still_verify():
    cases = [VerifyCase("pos0", 0, 1), VerifyCase("greedy", 2, 1, generate=2, seed=2**63 - 1)]
    v = amk.evaluate("toy", "cpu-sim", {}, cases=cases)
    assert v["valid"] and v["correct"], v["failures"]
    assert v["cases_passed"] == v["cases_total"] == 2


def test_the_largest_seed_the_argument_check_takes_gives_cases_it_takes_too():
    # the default cases offset the seed by up to 4: at 2**63 - 1 every case was refused, and every trial crashed
    from amk.eval.cases import default_cases
    from amk.harness.arguments import SEED_LIMIT

    for reduced in (False, True):
        cases = default_cases(512, reduced=reduced, seed=SEED_LIMIT - 1)
        assert cases and all(0 <= c.seed < SEED_LIMIT for c in cases)
        assert len({c.seed for c in cases}) == len({c.seed for c in default_cases(512, reduced=reduced, seed=7)})


def test_numpy_integer_fields_are_the_ints_they_hold():
    """A case built from a sweep's numpy integers verifies as the same case of ints (it was refused by name); a
    numpy bool is still no integer."""
    import json

    import numpy as np

    case = VerifyCase("greedy", np.int64(2), np.int32(1), generate=np.int64(2), seed=np.uint16(3))
    assert case == VerifyCase("greedy", 2, 1, generate=2, seed=3)
    assert all(type(getattr(case, f)) is int for f in ("prefix_len", "tokens", "generate", "seed"))
    json.dumps(case.to_dict())
    v = amk.evaluate("toy", "cpu-sim", {}, cases=[case])
    assert v["valid"] and v["correct"] and v["cases_passed"] == 1, v["failures"]
    with pytest.raises(amk.ArgumentError, match=r"cases\[0\]\.tokens"):
        amk.evaluate("toy", "cpu-sim", {}, cases=[VerifyCase("b", 0, np.bool_(True))])
