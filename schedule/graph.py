"""The decode-step graph of a Llama-family model, imported from its HF config."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import Enum

from .errors import UnsupportedModelError


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

    @property
    def group(self) -> int:
        return self.n_heads // self.n_kv_heads

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

    @classmethod
    def from_hf_config(cls, cfg) -> ModelDims:
        mt = getattr(cfg, "model_type", None)
        try:
            arch = Architecture(mt)
        except ValueError:
            raise UnsupportedModelError(f"architecture {mt!r}", "supported: llama, mistral, qwen2, qwen3") from None
        act = getattr(cfg, "hidden_act", "silu")
        if act != "silu":
            raise UnsupportedModelError(f"hidden_act={act!r}", "only silu MLPs are lowered")
        if getattr(cfg, "mlp_bias", False):
            raise UnsupportedModelError("mlp_bias", "MLP projections with bias")
        attention_bias = bool(getattr(cfg, "attention_bias", False))
        if arch in (Architecture.LLAMA, Architecture.MISTRAL, Architecture.QWEN3) and attention_bias:
            raise UnsupportedModelError("attention_bias", "bias on the attention output projection")
        rope = getattr(cfg, "rope_scaling", None) or {}
        params = getattr(cfg, "rope_parameters", None) or {}
        rope_type = (rope.get("rope_type") or rope.get("type") or params.get("rope_type") or "default")
        if rope_type not in ("default", "llama3", "linear"):
            raise UnsupportedModelError(f"rope_type={rope_type!r}", "position-dependent tables only")
        n_heads = cfg.num_attention_heads
        n_kv = getattr(cfg, "num_key_value_heads", None) or n_heads
        if n_heads % n_kv:
            raise UnsupportedModelError("grouped-query attention", f"{n_heads} heads over {n_kv} KV heads")
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
        if head_dim % 8 or head_dim > 256:
            raise UnsupportedModelError(f"head_dim={head_dim}", "must be a multiple of 8, at most 256")
        if cfg.hidden_size % 8 or cfg.intermediate_size % 8:
            raise UnsupportedModelError("width not a multiple of 8", f"{cfg.hidden_size}, {cfg.intermediate_size}")
        return cls(
            arch=arch,
            hidden=cfg.hidden_size,
            intermediate=cfg.intermediate_size,
            n_layers=cfg.num_hidden_layers,
            n_heads=n_heads,
            n_kv_heads=n_kv,
            head_dim=head_dim,
            vocab=cfg.vocab_size,
            rms_eps=float(cfg.rms_norm_eps),
            tied_embeddings=bool(getattr(cfg, "tie_word_embeddings", False)),
            qkv_bias=arch == Architecture.QWEN2 or attention_bias,
            qk_norm=arch == Architecture.QWEN3,
            max_positions=int(getattr(cfg, "max_position_embeddings", 2048)),
        )


@dataclass(frozen=True)
class GraphOp:
    kind: OpKind
    layer: int  # -1 outside the layers
    inputs: tuple[str, ...]
    output: str
    weight: str | None = None


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
            GraphOp(OpKind.ATTENTION, layer, ("q", f"kv.{layer}"), "attn"),
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
