"""How far above its floor a measured step is, per decoder layer: (step - measured floor) / layers, from result files
of bench/megakernel.py, beside what a target share of the floor would allow a layer.

    python bench/layer_tax.py bench/results/20261206-2254_h200_five_shapes_at_965f3ea/*.json \
        bench/results/20261206-040730_h200_smollm2-135m_bf16.json --bar llama-3.2-1b=75 --bar tinyllama-1.1b=70

The floor is the file's own (weights and KV cache over the read bandwidth measured in that process). A constant
"us a layer above the floor" across shapes whose layers differ twentyfold in bytes says the step pays a fixed
latency a layer that the weight stream does not hide; the bar's allowance, floor * (100 / pct - 1) / layers, is
what that latency may be for the step to reach pct percent of its floor. The layer count is read from
bench/shapes.py's catalogue by the model's name (its last path component). Prints one line a file, then JSON.
"""

from __future__ import annotations

import argparse
import json
import os

from shapes import SHAPES  # a sibling script, importable when this one runs (as trace.py imports variants)


def layers_of(model: str) -> int:
    """The decoder layers of a catalogued shape, by the last component of its name or path. Raises KeyError naming
    the shape when bench/shapes.py does not list it."""
    name = os.path.basename(os.path.normpath(model))
    if name not in SHAPES:
        raise KeyError(f"{model}: not a shape of bench/shapes.py ({', '.join(sorted(SHAPES))})")
    return int(SHAPES[name][1]["num_hidden_layers"])


def tax_rows(path: str, bars: dict[str, float]) -> list[dict]:
    """One row a default-config megakernel result of the file: step and floor (us), layers, us a layer above the
    floor, and where a bar is given for the shape, the us a layer that bar allows."""
    with open(path) as f:
        d = json.load(f)
    floor = float(d["floor"]["measured_floor_us"])
    name = os.path.basename(os.path.normpath(d["model"]))
    n = layers_of(d["model"])
    rows = []
    for mk in d["megakernel"]:
        if mk.get("config"):
            continue
        step = float(mk["latency_us"])
        row = {"model": name, "file": os.path.basename(path), "step_us": round(step, 1), "floor_us": round(floor, 1),
               "pct_of_floor": round(100 * floor / step, 1), "layers": n,
               "above_floor_us_a_layer": round((step - floor) / n, 2)}
        if name in bars:
            row["bar_pct"] = bars[name]
            row["bar_allows_us_a_layer"] = round(floor * (100 / bars[name] - 1) / n, 2)
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+", help="bench/megakernel.py result files (JSON)")
    ap.add_argument("--bar", action="append", default=[], metavar="SHAPE=PCT",
                    help="a target share of the measured floor for a shape (repeatable)")
    args = ap.parse_args()
    bars = {}
    for b in args.bar:
        shape, _, pct = b.partition("=")
        try:
            bars[shape] = float(pct)
        except ValueError:
            ap.error(f"--bar {b!r}: expected SHAPE=PCT, PCT a number")
        if not 0 < bars[shape] <= 100:
            ap.error(f"--bar {b!r}: PCT must lie in (0, 100]")
    rows = [r for p in args.files for r in tax_rows(p, bars)]
    for r in rows:
        bar = f"  {r['bar_pct']:.0f}% allows {r['bar_allows_us_a_layer']:.1f}" if "bar_pct" in r else ""
        print(f"{r['model']:<16} {r['step_us']:8.1f} us  floor {r['floor_us']:7.1f}  {r['pct_of_floor']:5.1f}%  "
              f"{r['layers']:2d} layers  {r['above_floor_us_a_layer']:5.2f} us a layer above the floor{bar}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
