"""A loaded amk.Model whose weights are edited after load (a notebook's in-place op, a replaced Parameter): its
fingerprint, the key of every cached reference, follows the weights it holds, so that neither the edited model
nor a later unedited load reads the other's cached eager logits; the fp32/fp64 copies made from the old weights
are made again. An unedited model keeps the fingerprint its load gives."""

from __future__ import annotations

import logging

import pytest
import torch

import amk

# load_model(...).fingerprint of the built-in models at seed 0 before weights were followed after load: the
# reference data cached on disk under them stay readable
TOY = "6ef304c87d9cc53096db097c4dd4008aeef4f506f58fb1b9e8621d6994aa1b4d"
TOY_2L = "9265488285c88f8db4c178e3aed7fc6137ce9de90d1d5b4911fde6da50a2ed70"


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """A fresh AMK_CACHE_DIR for each test: the reference data one test caches are no other test's."""
    monkeypatch.setenv("AMK_CACHE_DIR", str(tmp_path / "amk_cache"))


def _evaluate(model) -> dict:
    return amk.evaluate(model, "cpu-sim", {}, device="cpu", cases="reduced", measure=False)


def _scale_down_proj(model, factor: float = 3.0) -> None:
    with torch.no_grad():
        model.eager.model.layers[0].mlp.down_proj.weight.mul_(factor)


@pytest.mark.parametrize("name, fingerprint", [("toy", TOY), ("toy-2L", TOY_2L)])
def test_an_unedited_model_keeps_its_load_fingerprint(name, fingerprint, caplog):
    m = amk.load_model(name)
    assert m.fingerprint == fingerprint == amk.load_model(name, weights=False).fingerprint
    assert m.cast("bf16").fingerprint == fingerprint  # the same weights, whatever the compute dtype
    with caplog.at_level(logging.WARNING, logger="amk"):
        v = _evaluate(m)
        m.accuracy_eager()
    assert v["correct"] is True and m.fingerprint == fingerprint  # nothing AMK runs counts as an edit
    assert "weights changed since load" not in caplog.text


def test_an_edit_after_load_poisons_no_reference_of_the_unedited_weights(caplog):
    edited = amk.load_model("toy")
    _scale_down_proj(edited)
    with caplog.at_level(logging.WARNING, logger="amk"):
        v = _evaluate(edited)
    fresh = _evaluate("toy")  # the unedited weights, with the edited model's references already cached
    assert v["correct"] is True, v["failures"]
    assert fresh["correct"] is True, fresh["failures"]
    assert edited.fingerprint not in (TOY, TOY_2L)
    assert caplog.text.count("weights changed since load") == 1  # once an edit, however many reads follow
    assert "model.layers.0.mlp.down_proj.weight" in caplog.text


def test_an_edit_after_an_evaluate_is_verified_against_the_edited_weights():
    m = amk.load_model("toy")
    assert _evaluate(m)["correct"] is True
    _scale_down_proj(m)
    v = _evaluate(m)
    assert v["correct"] is True, v["failures"]  # not the unedited weights' cached logits
    assert m.fingerprint != TOY


def test_the_edited_fingerprint_is_the_content_of_the_weights():
    from amk.models.weight_edits import edited_fingerprint

    a, b = amk.load_model("toy"), amk.load_model("toy")
    _scale_down_proj(a)
    _scale_down_proj(b)
    assert a.fingerprint == b.fingerprint == edited_fingerprint(TOY, a.eager)  # the same edit: the same references
    _scale_down_proj(b, 0.5)
    assert b.fingerprint not in (a.fingerprint, TOY)


def test_a_replaced_parameter_is_an_edit():
    m = amk.load_model("toy-2L")
    attn = m.eager.model.layers[1].self_attn
    attn.q_proj.bias = torch.nn.Parameter(attn.q_proj.bias + 0.25, requires_grad=False)
    assert m.fingerprint not in (TOY, TOY_2L)
    assert _evaluate(m)["correct"] is True


def test_the_higher_precision_copies_follow_the_edit():
    m = amk.load_model("toy")
    weight = m.eager.model.layers[0].mlp.down_proj.weight
    stale = m.accuracy_eager()
    _scale_down_proj(m)
    fresh = m.accuracy_eager()
    assert fresh is not stale and torch.equal(fresh.model.layers[0].mlp.down_proj.weight, weight.double())

    b = amk.load_model("toy").cast("bf16")
    kept = b.fp32_eager()  # the fp32 model it was cast from
    with torch.no_grad():
        b.eager.lm_head.weight.add_(0.5)
    assert b.fp32_eager() is not kept and torch.equal(b.fp32_eager().lm_head.weight, b.eager.lm_head.weight.float())
    assert b.fingerprint != TOY


def test_a_kept_fp32_reference_edited_after_the_cast_is_made_again():
    m = amk.load_model("toy")
    b = m.cast("bf16")
    assert b.fp32_eager() is m.eager
    _scale_down_proj(m)
    assert b.fingerprint == TOY  # its own weights were not edited
    ref = b.fp32_eager()
    assert ref is not m.eager
    assert torch.equal(ref.model.layers[0].mlp.down_proj.weight, b.eager.model.layers[0].mlp.down_proj.weight.float())
