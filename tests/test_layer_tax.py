"""bench/layer_tax.py on hand-made result files: the time a layer above the floor and a bar's allowance, against
figures worked by hand; a shape bench/shapes.py does not list, and a malformed --bar, are refused by name."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "bench" / "layer_tax.py"


@pytest.fixture
def layer_tax(monkeypatch):
    """The script as a module, its sibling bench/shapes.py importable as when it runs."""
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("bench_layer_tax", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _result(tmp_path, model, step_us, floor_us, best=None):
    rows = [{"config": {}, "latency_us": step_us}]
    if best is not None:
        rows.append({"config": {"attention": {"kv_partitions": 16}}, "latency_us": best})
    p = tmp_path / f"{Path(model).name}.json"
    p.write_text(json.dumps({"model": model, "floor": {"measured_floor_us": floor_us}, "megakernel": rows}))
    return p


def test_a_layer_above_the_floor_and_the_bar_allowance(tmp_path, layer_tax):
    # llama-3.2-1b has 16 layers: (900 - 600) / 16 = 18.75 us; at 75% the step may be 800 us, 200 / 16 = 12.5
    p = _result(tmp_path, "/tmp/shapes/llama-3.2-1b", 900.0, 600.0, best=850.0)
    rows = layer_tax.tax_rows(str(p), {"llama-3.2-1b": 75.0})
    assert len(rows) == 1  # the default config's row only
    r = rows[0]
    assert (r["layers"], r["above_floor_us_a_layer"], r["bar_allows_us_a_layer"]) == (16, 18.75, 12.5)
    assert r["pct_of_floor"] == pytest.approx(66.7)


def test_no_bar_no_allowance(tmp_path, layer_tax):
    p = _result(tmp_path, "smollm2-135m", 600.0, 60.0)
    (r,) = layer_tax.tax_rows(str(p), {})
    assert r["above_floor_us_a_layer"] == 18.0 and "bar_allows_us_a_layer" not in r  # 30 layers


def test_an_unlisted_shape_is_named(tmp_path, layer_tax):
    p = _result(tmp_path, "/models/my-own-7b", 900.0, 600.0)
    with pytest.raises(KeyError, match="my-own-7b"):
        layer_tax.tax_rows(str(p), {})


@pytest.mark.parametrize("bar", ["llama-3.2-1b=high", "llama-3.2-1b=0", "llama-3.2-1b=120"])
def test_a_malformed_bar_is_a_usage_error(tmp_path, bar):
    p = _result(tmp_path, "llama-3.2-1b", 900.0, 600.0)
    out = subprocess.run([sys.executable, str(SCRIPT), str(p), "--bar", bar], capture_output=True, text=True)
    assert out.returncode == 2 and "--bar" in out.stderr
