"""Each quantized layer's unquantized original, found by canonical role and index, not by name.

Quantizers rename as they go: llm-compressor writes Mixtral's experts as ``experts.E.gate_proj``
where the original has ``block_sparse_moe.experts.E.w1``; Gemma 4 and Qwen3-MoE originals store
the experts of a layer fused (``experts.gate_up_proj`` [E, 2I, H]) where ModelOpt writes them one
by one; gpt-oss originals fuse them transposed and interleaved. Both sides are classified by
:mod:`nvfp4tools.roles`, so a layer is matched on (stack, layer, role, expert, projection), and
fused tensors are sliced, stacked or concatenated to the quantized layer's logical shape. A layer
with no counterpart is reported with the reason, never skipped in silence.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import numpy as np

from .model import Checkpoint, TensorInfo

# Module-path components that name the language model inside a wrapper (Gemma 4's
# ``model.language_model``, multimodal ``text_model``): a stack is compared without them, so a
# text-only original matches a checkpoint of the full multimodal model and vice versa.
_WRAPPERS = frozenset({"model", "language_model", "text_model", "blk"})   # blk: a GGUF's layer list

# Projections an exporter may store fused, and the separate projections they are made of, in
# row order (the fused weight is the members concatenated along the output dimension).
FUSED_MEMBERS = {"qkv": ("q", "k", "v"), "gate_up": ("gate", "up")}


class ExpertLayout(NamedTuple):
    """How an original stores a layer's experts fused into 3-D tensors."""

    transposed: bool   # stored [E, in, out] (used as x @ W) instead of [E, out, in]
    interleaved: bool  # gate_up columns alternate gate, up instead of gate half then up half
    source: str


# model_type -> layout of its fused experts; absent: [E, out, in], gate half first
# (transformers' Qwen3-MoE / Gemma 4 experts: ``F.linear(x, gate_up_proj[e]).chunk(2)``).
FUSED_EXPERT_LAYOUTS = {
    "gpt_oss": ExpertLayout(True, True, "transformers models/gpt_oss/modeling_gpt_oss.py GptOssExperts: "
                            "gate_up = x @ gate_up_proj[e]; gate, up = gate_up[..., ::2], gate_up[..., 1::2]"),
}
_DEFAULT_LAYOUT = ExpertLayout(False, False, "transformers Qwen3-MoE / Gemma 4 experts")


def _four_bit(o: TensorInfo) -> str:
    """Why O cannot stand for an original weight ("" where it can): a 4-bit tensor is itself a
    quantization (an 8-bit original such as DeepSeek-V3's FP8 release is accepted)."""
    if o.scheme.quantized and o.scheme.bits <= 4:
        return (f"the original's {o.name} is {o.scheme.name} (4-bit): --against takes the unquantized "
                "(or 8-bit) checkpoint this one was quantized from")
    return ""


def stack_key(stack: str | None) -> str:
    if not stack:
        return ""
    return ".".join(p for p in stack.split(".") if p not in _WRAPPERS)


def match_key(t: TensorInfo) -> tuple:
    return (stack_key(t.stack), t.layer, t.role, t.expert, t.proj)


@dataclass
class Original:
    """An unquantized checkpoint, indexed for :meth:`weight` lookups (one fused tensor cached)."""

    ckpt: Checkpoint
    # row i of the quantized tensor T is row order(T)[i] of the original's (None: the same order):
    # where one side is a GGUF whose converter put Q/K rows into ggml's RoPE pair order
    row_order: Callable[[TensorInfo], np.ndarray | None] | None = None
    _index: dict[tuple, TensorInfo] = field(default_factory=dict)
    _cache: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for t in self.ckpt.tensors.values():
            if len(t.shape) >= 2:
                self._index.setdefault(match_key(t), t)
        model_type = self.ckpt.arch.model_type if self.ckpt.arch is not None else ""
        self.layout = FUSED_EXPERT_LAYOUTS.get(model_type, _DEFAULT_LAYOUT)

    def weight(self, t: TensorInfo) -> tuple[np.ndarray | None, str]:
        """(the original's float weight in T's logical shape and row order, "") or (None, why not)."""
        w, why = self._weight(t)
        order = self.row_order(t) if (w is not None and self.row_order is not None) else None
        return (w if order is None else w[order]), why

    def _weight(self, t: TensorInfo) -> tuple[np.ndarray | None, str]:
        key = match_key(t)
        o = self.ckpt.tensors.get(t.name)
        if o is None or o.shape != t.shape:
            o = self._index.get(key)
        if o is not None and _four_bit(o):
            return None, _four_bit(o)
        if o is not None:
            if o.shape == t.shape:
                return self._load(o), ""
            if self.layout.transposed and len(o.shape) >= 2 and o.shape[:-2] + (o.shape[-1], o.shape[-2]) == t.shape:
                return np.swapaxes(self._load(o), -1, -2), ""   # gpt-oss original [E, in, out] vs [E, out, in]
            return None, f"the original's {o.name} has shape {list(o.shape)}, expected {list(t.shape)}"
        w = self._from_experts(t) if t.role == "experts" else None
        if w is None and t.proj in FUSED_MEMBERS and not t.n_experts_fused:
            w = self._concat(t, key)
        if w is not None:
            if w.shape != t.shape:
                return None, f"the original's counterpart has shape {list(w.shape)}, expected {list(t.shape)}"
            return w, ""
        where = f"layer {t.layer}" if t.layer is not None else "no layer"
        ex = f", expert {t.expert}" if t.expert is not None else ""
        return None, f"no {t.role} tensor ({where}{ex}, projection {t.proj or '-'}) in the original"

    # -- helpers ---------------------------------------------------------------------------

    def _load(self, o: TensorInfo) -> np.ndarray:
        from nvfp4tools.tensors import dequantize

        return dequantize(self.ckpt, o)

    def _fused(self, o: TensorInfo) -> np.ndarray:
        if o.name not in self._cache:
            self._cache.clear()   # experts are visited layer by layer: one fused tensor at a time
            self._cache[o.name] = self._load(o)
        return self._cache[o.name]

    def _from_experts(self, t: TensorInfo) -> np.ndarray | None:
        s, layer = stack_key(t.stack), t.layer
        if t.n_experts_fused:
            # quantized fused [E, ...], original one expert per tensor: stack them
            per = []
            for e in range(t.n_experts_fused):
                o = self._index.get((s, layer, "experts", e, t.proj))
                if o is None and t.proj in FUSED_MEMBERS:
                    parts = [self._index.get((s, layer, "experts", e, m)) for m in FUSED_MEMBERS[t.proj]]
                    if any(p is None for p in parts):
                        return None
                    per.append(np.concatenate([self._load(p) for p in parts], axis=0))
                elif o is None:
                    return None
                else:
                    per.append(self._load(o))
            return np.stack(per)
        if t.expert is None:
            return None
        # the original fuses this very projection (down; gate_up against a fused gate_up, which verify
        # checks expert by expert; a GGUF's ffn_gate_exps): its slice
        o = self._index.get((s, layer, "experts", None, t.proj))
        if o is not None:
            w = self._fused(o)[t.expert]
            return w.T if self.layout.transposed else w
        if t.proj == "down":
            return None
        if t.proj in ("gate", "up"):
            o = self._index.get((s, layer, "experts", None, "gate_up"))
            if o is None:
                return None
            w = self._fused(o)[t.expert]
            if self.layout.transposed:
                w = w.T
            if self.layout.interleaved:
                return w[0::2] if t.proj == "gate" else w[1::2]
            half = w.shape[0] // 2
            return w[:half] if t.proj == "gate" else w[half:]
        return None

    def _concat(self, t: TensorInfo, key: tuple) -> np.ndarray | None:
        s, layer, role, expert, _ = key
        parts = [self._index.get((s, layer, role, expert, m)) for m in FUSED_MEMBERS[t.proj]]
        if any(p is None for p in parts):
            return None
        return np.concatenate([self._load(p) for p in parts], axis=0)


def gguf_rope_rows(ck: Checkpoint, t: TensorInfo) -> np.ndarray | None:
    """The row order llama.cpp's converter gives T's Q or K weight in the GGUF CK (row i holds the
    checkpoint's row perm[i]), or None where CK is no such GGUF or T no Q/K weight."""
    from nvfp4tools.convert.canon import llama_permutation
    from nvfp4tools.formats.gguf_restore import rope_permuted_heads

    heads = rope_permuted_heads(ck, t)
    return None if heads is None else llama_permutation(t.shape[0], heads)


def row_order_between(quantized: Checkpoint, original: Checkpoint) -> Callable[[TensorInfo], np.ndarray | None] | None:
    """Original.row_order for comparing QUANTIZED with ORIGINAL row for row: GGUF against
    safetensors, safetensors against GGUF (two GGUFs share their order)."""
    if (quantized.format == "gguf") == (original.format == "gguf"):
        return None
    from nvfp4tools.convert.canon import unpermute

    def order(t: TensorInfo) -> np.ndarray | None:
        if quantized.format == "gguf":
            return gguf_rope_rows(quantized, t)
        p = gguf_rope_rows(original, t)
        return None if p is None else unpermute(p)
    return order
