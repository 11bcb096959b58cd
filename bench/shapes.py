"""Public Llama-family shapes, saved with seeded random weights to local directories and loaded by path, as a
user with their own checkpoint would. The dimensions are those of the published configs (config.json of
each model card); nothing else of those models is used.

    python bench/shapes.py --out /tmp/shapes tinyllama-1.1b qwen2.5-0.5b     # prints one directory a line
    python bench/shapes.py --out /tmp/shapes --layers 2 qwen2.5-0.5b         # its widths, 2 layers: qwen2.5-0.5b-2l
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

# name -> (transformers config class name, its fields). Group sizes 3, 4, 7, 8 (and 2); head_dim 64 and 128;
# tied and untied heads; vocabularies from 32k to 152k; 16 to 36 layers; 0.1B to 3B parameters.
SHAPES: dict[str, tuple[str, dict]] = {
    "smollm2-135m": ("LlamaConfig", dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                         num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                                         tie_word_embeddings=True, rope_theta=100000.0, max_position_embeddings=8192,
                                         rms_norm_eps=1e-5)),
    "qwen2.5-0.5b": ("Qwen2Config", dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                                         num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
                                         tie_word_embeddings=True, rope_theta=1000000.0, max_position_embeddings=32768,
                                         rms_norm_eps=1e-6)),
    "tinyllama-1.1b": ("LlamaConfig", dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                                           num_attention_heads=32, num_key_value_heads=4, vocab_size=32000,
                                           tie_word_embeddings=False, max_position_embeddings=2048, rms_norm_eps=1e-5)),
    "llama-3.2-1b": ("LlamaConfig", dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                                         num_attention_heads=32, num_key_value_heads=8, head_dim=64, vocab_size=128256,
                                         tie_word_embeddings=True, rope_theta=500000.0, max_position_embeddings=131072,
                                         rms_norm_eps=1e-5,
                                         rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})),
    "qwen3-1.7b": ("Qwen3Config", dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                                       num_attention_heads=16, num_key_value_heads=8, head_dim=128, vocab_size=151936,
                                       tie_word_embeddings=True, rope_theta=1000000.0, max_position_embeddings=40960,
                                       rms_norm_eps=1e-6)),
    "qwen2.5-3b": ("Qwen2Config", dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                                       num_attention_heads=16, num_key_value_heads=2, vocab_size=151936,
                                       tie_word_embeddings=True, rope_theta=1000000.0, max_position_embeddings=32768,
                                       rms_norm_eps=1e-6)),
}


MARKER = "amk_shape.json"  # what save_shape wrote into a directory: the shape, seed, dtype and device of its weights


def save_shape(name: str, root: Path, seed: int = 0, dtype: torch.dtype = torch.bfloat16,
               device: str = "cpu", layers: int | None = None) -> Path:
    """Write `name`'s config and seeded random weights (safetensors) to root/name; returns the directory.
    `layers`: that many decoder layers in place of the shape's own (its widths, heads and vocabulary kept), saved
    to root/name-<layers>l, small enough to verify on a CPU. ValueError where it is below 1.
    A directory this function wrote before with the same shape, seed, dtype and device (whose random streams
    differ) is reused. The save goes to a temporary directory renamed into place, so an interrupted save or a
    concurrent one never leaves a half-written or mislabelled directory. SystemExit, naming the directory, where
    it holds anything else (other weights are never overwritten)."""
    import transformers

    if name not in SHAPES:
        raise SystemExit(f"unknown shape {name!r}; known: {', '.join(SHAPES)}")
    if layers is not None and (isinstance(layers, bool) or not isinstance(layers, int) or layers < 1):
        raise ValueError(f"layers must be a whole number of at least 1, not {layers!r}")
    root = Path(root)
    out = root / (name if layers is None else f"{name}-{layers}l")
    want = {"shape": name, "seed": int(seed), "dtype": str(dtype).removeprefix("torch."),
            "device": torch.device(device).type}
    if layers is not None:  # a full shape's marker has no such key, as before the option existed
        want["layers"] = layers
    if _reusable(out, want):
        return out
    cls_name, fields = SHAPES[name]
    cfg = getattr(transformers, cls_name)(**(fields if layers is None else {**fields, "num_hidden_layers": layers}))
    torch.manual_seed(int(seed))
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        (tmp / MARKER).write_text(json.dumps(want) + "\n")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would keep the checkpoint from other users a plain mkdir allows
        try:
            os.rename(tmp, out)  # atomic; replaces only a missing or empty directory
        except OSError:
            if not _reusable(out, want):  # another save got there first, with other weights
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _reusable(out: Path, want: dict) -> bool:
    """Whether `out` holds a save of `want` (True), is missing or empty (False); SystemExit otherwise."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return False
    try:
        have = json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        raise SystemExit(f"{out} holds files without a readable {MARKER} (another program's, or an older "
                         "bench/shapes.py's): give another --out, or remove the directory") from None
    if have != want:
        raise SystemExit(f"{out} holds {have}, not {want}: give another --out, or remove the directory")
    missing = [f for f in ("config.json", "model.safetensors") if not (out / f).is_file()]
    if missing:
        raise SystemExit(f"{out} has lost {', '.join(missing)}: remove the directory and save it again")
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    ap.add_argument("names", nargs="*", default=list(SHAPES), metavar="NAME",
                    help=f"shapes to save, any of {', '.join(SHAPES)} (default: all)")
    ap.add_argument("--out", required=True, help="folder to save the shapes under, one directory a shape")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random weights (default: 0); a directory "
                    "saved with another seed is refused, not overwritten")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    help="where the random weights are drawn (a GPU draws a 3B model in seconds)")
    ap.add_argument("--layers", type=int, default=None, help="that many decoder layers in place of each shape's own, "
                    "its widths kept, saved as NAME-<layers>l, small enough to verify on a CPU (default: the shape's "
                    "own)")
    args = ap.parse_args()
    unknown = [n for n in args.names if n not in SHAPES]
    if unknown:  # before any shape is saved
        ap.error(f"unknown shape(s) {', '.join(map(repr, unknown))}; known: {', '.join(SHAPES)}")
    if args.layers is not None and args.layers < 1:
        ap.error(f"--layers must be at least 1, not {args.layers}")
    for name in args.names:
        print(save_shape(name, Path(args.out), args.seed, device=args.device, layers=args.layers), flush=True)


if __name__ == "__main__":
    main()
