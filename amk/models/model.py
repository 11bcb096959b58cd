"""The loaded model, amk.models.Model: its dims, graph and weights, the fingerprint that names those weights in
every cache key and follows edits made to them after load, and the fp32/fp64 copies its accuracy checks measure
against; with approx_params, a model's parameter count from its dims alone."""

from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from amk.schedule.graph import Graph, ModelDims

from .names import dtype_name, resolve_dtype
from .weight_edits import WeightsSeen, edited_fingerprint

log = logging.getLogger("amk.models")


@dataclass
class Model:
    """A loaded model. `fingerprint` names its weights in every cache key (programs, reference logits, peer
    baselines): it is the load's (built-in config and seed, checkpoint files, GGUF file), and it follows edits made
    to `eager`'s weights after load (in place, or a tensor replaced): the next read of it, or of the fp32/fp64
    copies, sees the change, hashes the weights' content anew (edited_fingerprint) and drops those copies. A
    dataclass field backed by a property (installed below the class), so that positional construction,
    dataclasses.replace and field order stay as they were."""

    name: str
    dims: ModelDims
    graph: Graph
    dtype: torch.dtype
    hf_config: Any
    eager: Any  # transformers model, or None when loaded with weights=False
    tokenizer: Any
    source: str  # "random", "path" or "gguf"
    seed: int
    fingerprint: str  # declared before device etc.: positional callers pass it tenth
    device: str = "cpu"
    # a tokenizer file transformers could not read (CheckpointError naming it): raised where a text prompt needs it
    tokenizer_error: Any = field(default=None, repr=False, compare=False)
    # what config.json says of RoPE that transformers does not run (amk.models.rope_notes): the verdict's notes
    config_notes: tuple[str, ...] = field(default=(), repr=False, compare=False)
    _fp32: Any = field(default=None, repr=False, compare=False)
    _fp64: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        # a kept fp32 reference (cast from fp32) is the caller's own module, which they may edit after the cast
        self._fp32_seen = WeightsSeen(self._fp32)

    def _get_fingerprint(self) -> str:
        self._follow_weights()
        return self._fingerprint

    def _set_fingerprint(self, value: str) -> None:
        # dataclass __init__ assigns eager (a field before fingerprint) first: the value stands for these weights
        self._made_with = self._fingerprint = value
        self._seen = WeightsSeen(self.__dict__.get("eager"))

    def _follow_weights(self) -> None:
        """Where eager's weights changed since recorded: the fingerprint of their content, the fp32/fp64 copies made
        from the old ones dropped, and one warning naming what changed. A walk over the tensors when unchanged."""
        if self._seen.holds(self.eager):
            return
        changed = self._seen.changed(self.eager)
        before, self._fingerprint = self._fingerprint, edited_fingerprint(self._made_with, self.eager)
        self._seen = WeightsSeen(self.eager)
        copies = self._fp32 is not None or self._fp64 is not None
        self._fp32, self._fp64, self._fp32_seen = None, None, WeightsSeen(None)
        more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        log.warning("model %s: weights changed since load (%s%s): fingerprint %s -> %s, a hash of their content, so "
                    "that no reference cached for other weights is read for these%s", self.name,
                    ", ".join(changed[:3]), more, before[:16], self._fingerprint[:16],
                    "; the fp32/fp64 copies made from the old weights are dropped" if copies else "")

    def __getstate__(self) -> dict:
        # weak references do not pickle: the state goes without them, its fingerprint brought up to date first
        self._follow_weights()
        return {k: v for k, v in self.__dict__.items() if k not in ("_seen", "_fp32_seen")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._seen, self._fp32_seen = WeightsSeen(self.eager), WeightsSeen(self._fp32)

    def __repr__(self) -> str:
        # one line: the dataclass repr printed the whole transformers config and module tree
        d = self.dims
        return (f"Model({self.name!r}, {dtype_name(self.dtype)}, layers {d.n_layers}, hidden {d.hidden}, "
                f"heads {d.n_heads} q / {d.n_kv_heads} KV of head_dim {d.head_dim}, vocab {d.vocab}, "
                f"{'tied' if d.tied_embeddings else 'untied'} head, source {self.source}, device {self.device}, "
                f"weights {'loaded' if self.eager is not None else 'not loaded'})")

    def _check_weights(self) -> None:
        if self.eager is None:
            raise ValueError(f"model {self.name!r} was loaded with weights=False")

    def fp32_eager(self):
        """The same weights upcast to fp32: the accuracy reference for a bf16/fp16 run (the current weights: a copy
        made before an edit, or a kept fp32 model edited after the cast, is made again). ValueError for a model
        loaded with weights=False."""
        self._check_weights()
        if self.dtype == torch.float32:
            return self.eager
        self._follow_weights()
        if self._fp32 is not None and not self._fp32_seen.holds(self._fp32):
            log.warning("model %s: the fp32 model it was cast from changed since the cast: its fp32 reference is "
                        "made again from its own weights", self.name)
            self._fp32 = None
        if self._fp32 is None:
            self._fp32 = copy.deepcopy(self.eager).float().eval().requires_grad_(False)
            self._fp32_seen = WeightsSeen(self._fp32)
        return self._fp32

    def cast(self, dtype) -> Model:
        """The same model with its weights cast to `dtype` (what load_model gives for that dtype, without a
        second random initialisation). A cast from fp32 keeps the fp32 model as the accuracy reference."""
        dt = resolve_dtype(dtype)
        self._check_weights()
        self._follow_weights()  # replace() copies the fingerprint: it must be that of the weights cast
        eager = copy.deepcopy(self.eager).to(dt).eval().requires_grad_(False)
        keep32 = self.eager if self.dtype == torch.float32 else None
        return dataclasses.replace(self, dtype=dt, eager=eager, _fp32=keep32, _fp64=None)

    def accuracy_eager(self):
        """A higher-precision copy with the same weights (fp32 for bf16/fp16, fp64 for fp32): what both the VM
        and eager are measured against when they disagree by more than rounding. Made again after an edit."""
        if self.dtype != torch.float32:
            return self.fp32_eager()
        self._follow_weights()
        if self._fp64 is None:
            self._fp64 = copy.deepcopy(self.eager).double().eval().requires_grad_(False)
        return self._fp64

    def describe(self) -> dict:
        params = (sum(p.numel() for p in self.eager.parameters()) if self.eager is not None
                  else approx_params(self.dims))
        return {
            "name": self.name,
            "arch": self.dims.arch.value,
            "dims": self.dims.to_dict(),
            "dtype": str(self.dtype).removeprefix("torch."),
            "source": self.source,
            "fingerprint": self.fingerprint,
            "params": params,
        }


# Installed after the dataclass is made: inside the class body the property would be taken as the field's default.
# The generated __init__ assigns through the setter and dataclasses.replace reads through the getter.
Model.fingerprint = property(Model._get_fingerprint, Model._set_fingerprint,
                             doc="The fingerprint of the weights eager holds now (see Model).")


def approx_params(dims: ModelDims) -> int:
    embed = dims.vocab * dims.hidden
    return dims.n_layers * dims.layer_weight_params() + dims.hidden + embed * (1 if dims.tied_embeddings else 2)

