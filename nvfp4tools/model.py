"""The format-neutral checkpoint model. Every reader produces it; every command consumes it.

Stdlib only (no numpy, no torch): ``inspect`` and ``estimate`` run on it without importing
anything heavy.

Global-scale convention (the one convention inside nvfp4tools)
----------------------------------------------------------------
A two-level (NVFP4-style) weight dequantizes as

    w[r, 16b + j] = E2M1(code[r, 16b + j]) * float(block_scale[r, b]) * global_scale

i.e. the per-tensor global scale is a **multiplier** (ModelOpt's ``weight_scale_2``;
NVIDIA Model-Optimizer ``modelopt/torch/quantization/qtensor/nvfp4_tensor.py``,
``NVFP4QTensor.dequantize``). The activation scale is a multiplier too (ModelOpt's
``input_scale``: activations are quantized as ``x / input_scale``).

compressed-tensors stores the reciprocals (``weight_global_scale = 1/weight_scale_2``,
``input_global_scale = 1/input_scale``; compressed-tensors
``entrypoints/convert/converters/modelopt_nvfp4.py``). Its reader marks those parts with
``stored_as="divisor"``; :func:`canonical_scale` converts at that boundary and nowhere else.
The raw stored value is never rewritten in the model, so a converter can still copy bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Mapping, NamedTuple

PartRole = Literal[
    "data",          # the weight codes (packed or not)
    "block_scale",   # per-block scales (E4M3 for NVFP4, fp16/bf16 for int4 groups)
    "global_scale",  # per-tensor second-level weight scale
    "input_scale",   # static activation scale
    "zero_point",    # asymmetric int zero points
    "g_idx",         # activation-order group index
    "shape",         # compressed-tensors' stored logical shape
    "kv_scale",      # k/v cache scale attached to an attention projection
]

StoredAs = Literal["value", "multiplier", "divisor"]


@dataclass(frozen=True)
class QuantScheme:
    """How a tensor's numbers are encoded. Presets live in :mod:`nvfp4tools.schemes`."""

    name: str                    # registry key, e.g. "nvfp4", "int4-g128-sym", "bf16"
    element: str                 # "e2m1", "int4", "e4m3", "bf16", ...
    bits: float                  # bits per element of the data part
    block_size: int | None = None        # elements per block-scale group; None = not grouped
    block_scale: str | None = None       # dtype of the block scale ("e4m3", "f16", ...)
    global_scale: bool = False           # a per-tensor second-level scale exists
    activations: str | None = None       # "nvfp4", "fp8", None (weight-only)
    symmetric: bool = True
    quantized: bool = True               # False for bf16/fp16/fp32

    @property
    def label(self) -> str:
        """Short human label: ``nvfp4 (W4A4)``, ``int4 g128 (W4A16)``."""
        if not self.quantized:
            return self.name
        if self.element == "ggml":  # GGML block types: bits per weight include the block scales
            return f"{self.name} ({self.bits:.3g} bpw)"
        act = "A16" if self.activations is None else ("A4" if self.activations == "nvfp4" else "A8")
        wbits = int(self.bits) if self.bits == int(self.bits) else self.bits
        return f"{self.name} (W{wbits}{act})"


class TensorPart(NamedTuple):
    """One stored array: where it lives and what it holds.

    A NamedTuple rather than a frozen dataclass: a full-size MoE checkpoint has ~50,000 parts and
    inspect must build them all in well under a second.
    """

    role: PartRole
    key: str                     # the name inside the file
    file: str                    # path relative to the checkpoint root
    offset: int                  # absolute byte offset in ``file``
    nbytes: int
    stored_dtype: str            # safetensors dtype ("U8", "F8_E4M3", ...) or ggml type name
    stored_shape: tuple[int, ...]
    stored_as: StoredAs = "value"  # for scales: multiplier (canonical) or divisor (reciprocal)
    # stored [.., in, out] instead of [.., out, in] (gpt-oss's fused experts as ModelOpt exports
    # them: codes packed along dim -2, block scales [.., in/16, out]); every reader of the array
    # swaps the last two axes, so consumers always see the logical [.., out, in] orientation
    transposed: bool = False


@dataclass(frozen=True)
class TensorInfo:
    """One logical tensor, e.g. a Linear weight together with all of its scales."""

    name: str                    # canonical name: the module path + ".weight" (or the stored key)
    shape: tuple[int, ...]       # logical, row-major, outermost first; never packed
    scheme: QuantScheme
    parts: tuple[TensorPart, ...]
    role: str = "other"          # attention, mlp, experts, shared_expert, router, embedding, ...
    proj: str | None = None      # q, k, v, o, gate, up, down, gate_up, qkv, ...
    layer: int | None = None     # decoder layer index
    stack: str | None = None     # module path up to the layer list, e.g. "model.language_model"
    expert: int | None = None    # per-expert index when stored per expert
    n_experts_fused: int | None = None  # leading expert dimension of a fused 3-D tensor

    @classmethod
    def fast(cls, name: str, shape: tuple[int, ...], scheme: QuantScheme, parts: tuple[TensorPart, ...],
             role: str, proj: str | None, layer: int | None, stack: str | None, expert: int | None,
             n_experts_fused: int | None) -> "TensorInfo":
        """The constructor for readers' hot loops: a frozen dataclass's ``__init__`` pays an
        ``object.__setattr__`` per field (~3.5 us a tensor, ~12,000 tensors per MoE header)."""
        t = object.__new__(cls)
        t.__dict__.update(name=name, shape=shape, scheme=scheme, parts=parts, role=role, proj=proj,
                          layer=layer, stack=stack, expert=expert, n_experts_fused=n_experts_fused)
        return t

    # plain properties: cheaper to recompute than functools.cached_property's lookup (3.11 locks)
    @property
    def nbytes(self) -> int:
        n = 0
        for p in self.parts:
            n += p.nbytes
        return n

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def module(self) -> str:
        """The owning module path (the name without its last component)."""
        return self.name.rsplit(".", 1)[0] if self.name.endswith(".weight") else self.name

    def part(self, role: PartRole) -> TensorPart | None:
        for p in self.parts:
            if p.role == role:
                return p
        return None


@dataclass(frozen=True)
class LayerAttention:
    """Attention/KV facts of one decoder layer."""

    kind: Literal["full", "sliding", "none"]
    n_heads: int
    n_kv_heads: int
    head_dim_k: int
    head_dim_v: int
    window: int | None = None    # tokens, for sliding layers
    k_eq_v: bool = False         # the layer has no v_proj (V computed from K's weights)
    kv_shared_from: int | None = None  # reuses another layer's cache (no cache of its own)
    mla_latent_dim: int | None = None  # MLA: cached latent width (kv_lora_rank + rope dim)


@dataclass(frozen=True)
class ArchInfo:
    """Architecture facts an estimator needs, from config.json (or GGUF metadata)."""

    model_type: str
    n_layers: int
    hidden_size: int
    n_heads: int
    vocab_size: int
    layers: tuple[LayerAttention, ...]
    intermediate_size: int | None = None        # dense MLP width (0/None: no dense MLP)
    n_experts: int | None = None
    n_experts_active: int | None = None
    expert_intermediate_size: int | None = None
    n_shared_experts: int | None = None
    dense_mlp_with_experts: bool = False        # Gemma 4: a dense MLP runs beside the experts
    tie_word_embeddings: bool = False
    max_position_embeddings: int | None = None
    has_vision: bool = False
    architectures: tuple[str, ...] = ()

    @property
    def n_full_layers(self) -> int:
        return sum(1 for l in self.layers if l.kind == "full" and l.kv_shared_from is None)

    @property
    def n_sliding_layers(self) -> int:
        return sum(1 for l in self.layers if l.kind == "sliding" and l.kv_shared_from is None)


@dataclass(frozen=True)
class Finding:
    """Something inspect (or a reader) noticed. ``severity`` "error" makes the exit code 1."""

    code: str
    severity: Literal["error", "warning", "info"]
    message: str
    tensor: str | None = None
    file: str | None = None
    source: str | None = None   # where the rule comes from (an engine's source file and function)


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint as headers describe it. No tensor bytes are held."""

    format: str                          # registry key of the reader that produced it
    source: str                          # the path (or hub id) given by the user
    root: str                            # directory the part files are relative to
    tensors: Mapping[str, TensorInfo]    # insertion-ordered, keyed by canonical name
    files: tuple[str, ...]               # data files read (relative to root)
    file_bytes: int                      # bytes on disk of those files
    config: Mapping[str, object] = field(default_factory=dict)
    arch: ArchInfo | None = None
    producer: str | None = None
    producer_version: str | None = None
    quant_method: str | None = None      # e.g. "modelopt", "compressed-tensors", "gguf"
    algorithm: str | None = None         # e.g. "NVFP4", "nvfp4-pack-quantized", "MOSTLY_Q4_0"
    kv_cache_scheme: str | None = None
    exclude_patterns: tuple[str, ...] = ()   # exclude_modules / ignore, as written
    findings: tuple[Finding, ...] = ()       # reader-level findings
    metadata: Mapping[str, object] = field(default_factory=dict)


def canonical_scale(stored_value: float, part: TensorPart) -> float:
    """Convert a stored per-tensor scale to the model's multiplier convention.

    compressed-tensors stores ``weight_global_scale = 1/weight_scale_2`` (divisor);
    see the module docstring for the sources.
    """
    if part.stored_as == "divisor":
        if stored_value == 0.0:
            return float("inf")
        return 1.0 / stored_value
    return stored_value
