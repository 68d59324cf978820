"""The conversion plan: typed actions, each mapping source tensors to output parts.

A plan is built by the target format's writer (``FormatSpec.writer``), before any tensor byte is
read; the streaming, the verification and the report all read the same fields. Nothing in a plan
is text to be parsed back: ``note`` is for people only.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from nvfp4tools.formats.layouts import Out
from nvfp4tools.model import Checkpoint


class Kind(str, Enum):
    COPY = "copy"                  # same bytes (a per-tensor scalar may change convention)
    RENIBBLE = "renibble"          # NVFP4 codes and scale bytes into another block layout
    REPACK = "repack"              # int4 group-symmetric <-> Q4_0 (same values, other packing)
    CAST = "cast"                  # an unquantized tensor into a wider or equal dtype, exactly
    STACK = "stack"                # per-expert tensors into one [E, ...] tensor
    SPLIT = "split"                # rows of a stacked or fused tensor into their own tensor
    GENERATE = "generate"          # a tensor the target needs and the source lacks (rope_freqs)
    RESTORE = "restore"            # bytes recorded by an earlier conversion (an undone fold)
    QUANTIZE = "quantize"          # lossy: requantized with the reference quantizers
    MERGE = "merge"                # several source tensors combined into one (undoing a SPLIT: ``merge``)


@dataclass(frozen=True)
class RowSlice:
    """Rows ``start:stop`` of expert ``expert`` of a 3-D source (``expert`` None: of every
    expert, or of a 2-D source)."""

    expert: int | None
    start: int
    stop: int


@dataclass(frozen=True)
class MLASplit:
    """One half of DeepSeek MLA's ``kv_b_proj`` [n_head * (nope + v), kv_lora_rank] as llama.cpp
    writes it (conversion/deepseek.py DeepseekV2Model.modify_tensors): viewed [n_head, nope + v,
    kv_lora_rank] and split; ``attn_k_b`` = the nope rows transposed to [n_head, kv_lora_rank, nope],
    ``attn_v_b`` = the v rows as they are, [n_head, v, kv_lora_rank]."""

    n_head: int
    nope: int
    v: int
    part: str   # "k" | "v"


@dataclass(frozen=True)
class Rearrange:
    """A stored [.., a, b] tensor's values rearranged for the target, per expert of a 3-D source:
    the last two axes swapped (``transpose``), then every ``step``-th index from ``start`` kept along
    ``axis`` (-1 or -2, counted after the swap). gpt-oss's experts, stored [E, in, out] with gate
    and up interleaved, become llama.cpp's [E, out, in] ffn_gate_exps / ffn_up_exps this way
    (conversion/gpt_oss.py GptOssModel.modify_tensors)."""

    transpose: bool = False
    axis: int = -2
    start: int = 0
    step: int = 1


@dataclass
class Action:
    kind: Kind
    sources: tuple[str, ...]       # source tensor names, in the order their bytes are used
    outs: tuple[Out, ...]
    exact: bool
    out_name: str | None = None    # the tensor's name in the output as its reader names it
    rows: RowSlice | None = None   # SPLIT: the source rows this action writes
    stack: str | None = None       # STACK: "gate_up" (two members per expert) or "one"
    fold: str | None = None        # a per-expert scale tensor multiplied into the global (GGUF Gemma 4)
    permute_heads: int | None = None   # llama.cpp's Q/K row permutation over this many heads
    unpermute: bool = False        # apply the inverse of that permutation (GGUF -> safetensors)
    merge: str | None = None       # MERGE: "mla_kv_b" (attn_k_b + attn_v_b) | "interleave_rows" (gpt-oss
                                   # gate + up -> gate_up_proj [E, in, out]) | "interleave_cols" (their biases)
    quantize_to: str | None = None     # QUANTIZE: "nvfp4" | "int4" | "q4_0" | "bf16" (dequantized)
    share_global_with: tuple[str, ...] = ()   # QUANTIZE to NVFP4: one global over these siblings
    global_override: tuple[float, ...] | None = None   # restored original multipliers
    mla: MLASplit | None = None    # SPLIT: one half of an MLA kv_b_proj (GGUF DeepSeek)
    rearrange: Rearrange | None = None   # SPLIT/CAST: values transposed / strided (GGUF gpt-oss experts)
    const: bytes | None = None     # GENERATE / RESTORE: the output's bytes
    note: str = ""

    @property
    def nbytes(self) -> int:
        return sum(o.nbytes for o in self.outs)

    @property
    def label(self) -> str:
        if self.kind == Kind.QUANTIZE:
            return f"quantize->{self.quantize_to}"
        return self.kind.value + (("+unpermute" if self.unpermute else "+permute") if self.permute_heads else "") + ("+fold" if self.fold else "") + (
            f"+mla_{self.mla.part}_b" if self.mla else "") + ("+rearrange" if self.rearrange else "")


@dataclass
class Plan:
    src: Checkpoint
    to: str
    actions: list[Action]
    # output key -> original fp32 bits (hex), or a list of them for per-expert values
    exact_meta: dict[str, str | list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)   # source tensors the target does not carry
    config: dict[str, Any] | None = None   # config.json for an output whose source has none (a GGUF)

    @property
    def lossless(self) -> bool:
        return all(a.exact for a in self.actions)

    @property
    def n_output_tensors(self) -> int:
        """Tensors in the output as a reader counts them: one per action (its scales included)."""
        return len(self.actions)

    def as_dict(self) -> dict[str, Any]:
        counts = collections.Counter((a.label, a.exact) for a in self.actions)
        return {"schema": "nvfp4tools/convert-plan/v2", "source": self.src.source, "from": self.src.format,
                "to": self.to, "lossless": self.lossless, "n_output_tensors": self.n_output_tensors,
                "n_output_parts": sum(len(a.outs) for a in self.actions),
                "output_tensor_bytes": sum(a.nbytes for a in self.actions), "notes": list(self.notes),
                "dropped": list(self.dropped),
                "actions": [{"action": a, "exact": e, "tensors": n} for (a, e), n in sorted(counts.items())],
                "tensors": [{"sources": list(a.sources[:3]) + ([f"... +{len(a.sources) - 3}"] if len(a.sources) > 3
                                                               else []),
                             "outputs": [o.key for o in a.outs][:6], "action": a.label, "exact": a.exact,
                             "bytes": a.nbytes, "note": a.note} for a in self.actions]}
