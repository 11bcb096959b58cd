"""The decode-step graph of a Llama-family model, imported from its HF config."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from enum import Enum


class Architecture(str, Enum):
    LLAMA = "llama"
    MISTRAL = "mistral"
    QWEN2 = "qwen2"
    QWEN3 = "qwen3"


class OpKind(str, Enum):
    EMBED = "embed"
    RMSNORM = "rmsnorm"
    LINEAR = "linear"
    ROPE = "rope"
    KV_APPEND = "kv_append"
    ATTENTION = "attention"
    SILU_MUL = "silu_mul"
    ADD = "add"
    LM_HEAD = "lm_head"
    ARGMAX = "argmax"


@dataclass(frozen=True)
class ModelDims:
    arch: Architecture
    hidden: int
    intermediate: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab: int
    rms_eps: float
    tied_embeddings: bool
    qkv_bias: bool
    qk_norm: bool
    max_positions: int
    # per layer: the sliding window in positions (the position itself included), 0 for full attention; () when
    # no layer has one
    windows: tuple[int, ...] = ()

    @property
    def group(self) -> int:
        return self.n_heads // self.n_kv_heads

    def split_groups(self, q_splits: int) -> ModelDims:
        """The dims as a partition attention task sees them under attention.q_splits: each of a KV head's
        q_splits task groups of group / q_splits q heads counts as a KV head (shared-memory sizes read .group)."""
        return dataclasses.replace(self, n_kv_heads=self.n_kv_heads * q_splits)

    @property
    def qkv_rows(self) -> int:
        return (self.n_heads + 2 * self.n_kv_heads) * self.head_dim

    def to_dict(self) -> dict:
        d = asdict(self)
        d["arch"] = self.arch.value
        return d

    def layer_weight_params(self) -> int:
        h, i = self.hidden, self.intermediate
        p = h * self.qkv_rows + self.n_heads * self.head_dim * h + 3 * h * i + 2 * h
        if self.qkv_bias:
            p += self.qkv_rows
        if self.qk_norm:
            p += 2 * self.head_dim
        return p

    def step_weight_params(self) -> int:
        """Parameters one decode step reads: every layer, the final norm and the LM head (the embedding
        row read is negligible)."""
        return self.n_layers * self.layer_weight_params() + self.hidden + self.vocab * self.hidden

    def window(self, layer: int) -> int:
        """Positions layer `layer` attends to, counting its own (a sliding window); 0: every cached position."""
        return self.windows[layer] if self.windows else 0

    @classmethod
    def from_hf_config(cls, cfg) -> ModelDims:
        """The dims of a transformers config, after every field it sets has been checked against the field table
        (amk.models.fields): raises UnsupportedModelError naming a field whose value AMK does not lower."""
        from amk.models.fields import model_dims  # the table knows transformers' config classes

        return model_dims(cfg)


@dataclass(frozen=True)
class GraphOp:
    kind: OpKind
    layer: int  # -1 outside the layers
    inputs: tuple[str, ...]
    output: str
    weight: str | None = None
    window: int = 0  # ATTENTION: positions attended, the current one included; 0 for all of them


@dataclass(frozen=True)
class Graph:
    dims: ModelDims
    ops: tuple[GraphOp, ...]

    def summary(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for op in self.ops:
            out[op.kind.value] = out.get(op.kind.value, 0) + 1
        return out


def build_graph(dims: ModelDims) -> Graph:
    """One decode step: the ops in the order eager transformers runs them."""
    ops: list[GraphOp] = [GraphOp(OpKind.EMBED, -1, ("token",), "x", "embed")]
    for layer in range(dims.n_layers):
        p = f"layers.{layer}."
        ops += [
            GraphOp(OpKind.RMSNORM, layer, ("x",), "xn", p + "attn_norm"),
            GraphOp(OpKind.LINEAR, layer, ("xn",), "qkv", p + "qkv"),
            GraphOp(OpKind.ROPE, layer, ("qkv",), "q", "rope"),
            GraphOp(OpKind.KV_APPEND, layer, ("qkv",), f"kv.{layer}"),
            GraphOp(OpKind.ATTENTION, layer, ("q", f"kv.{layer}"), "attn", window=dims.window(layer)),
            GraphOp(OpKind.LINEAR, layer, ("attn",), "o", p + "o"),
            GraphOp(OpKind.ADD, layer, ("x", "o"), "x"),
            GraphOp(OpKind.RMSNORM, layer, ("x",), "xn", p + "mlp_norm"),
            GraphOp(OpKind.LINEAR, layer, ("xn",), "gu", p + "gate_up"),
            GraphOp(OpKind.SILU_MUL, layer, ("gu",), "act"),
            GraphOp(OpKind.LINEAR, layer, ("act",), "d", p + "down"),
            GraphOp(OpKind.ADD, layer, ("x", "d"), "x"),
        ]
    ops += [
        GraphOp(OpKind.RMSNORM, -1, ("x",), "xf", "final_norm"),
        GraphOp(OpKind.LM_HEAD, -1, ("xf",), "logits", "lm_head"),
        GraphOp(OpKind.ARGMAX, -1, ("logits",), "token"),
    ]
    return Graph(dims, tuple(ops))
