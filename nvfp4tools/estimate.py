"""``estimate``: weight VRAM, KV bytes per token, KV-pool tokens and concurrency for a GPU and
an engine, from a checkpoint's headers (stdlib only).

Each number is a sum of named terms, each with the mechanism that produces it and its source
(``terms``/``explain``). Engine accounting (:mod:`.estimate_engines`) follows ``../shared/docs/gemma4-memory.md``:
vLLM v1 (``gpu_worker.determine_available_memory``, ``kv_cache_utils``), SGLang
(``mem_fraction_static`` of free memory, hybrid SWA pools), llama.cpp (iSWA cache, 256 padding).
No term is a constant fitted to one published figure; what cannot be explained is said in ``notes``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

from ._version import __version__
from .arch import text_config
from .errors import FormatError, UsageError
from .gpus import GPU
from .model import ArchInfo, Checkpoint, LayerAttention, TensorInfo, TensorPart
from .schemes import NVFP4

SCHEMA = "nvfp4tools/estimate/v1"
GiB = 2**30

# Bytes per cached element (llama.cpp block types include their fp16 scale per 32 elements).
KV_DTYPE_BYTES = {"bf16": 2.0, "fp16": 2.0, "fp32": 4.0, "fp8": 1.0, "fp8_e4m3": 1.0, "fp8_e5m2": 1.0,
                  "q8_0": 34 / 32, "q4_0": 18 / 32}
ENGINE_KV_DTYPES = {
    "vllm": ("bf16", "fp16", "fp8", "fp8_e4m3", "fp8_e5m2"),
    "sglang": ("bf16", "fp16", "fp8", "fp8_e4m3", "fp8_e5m2"),
    "llamacpp": ("fp16", "bf16", "q8_0", "q4_0", "fp32"),
}
VLLM_BLOCK = 16          # vLLM default block_size (tokens per KV block)
LLAMA_PAD = 256          # llama.cpp pads cache sizes to 256 cells (GGML_PAD(..., 256))
CUBLAS_WORKSPACE = 32 * 2**20  # torch's default cuBLAS workspace on sm90+ (CUBLAS_WORKSPACE_CONFIG :4096:8 x 4)
# Suggestions try tensor-parallel sizes up to one 8-GPU host (NVLink domain of HGX/DGX boards).
SUGGEST_MAX_TP = 8
# Tensor roles that are Linear layers an NVFP4 checkpoint quantizes (embedding, norms, routers,
# vision tower stay in BF16 in every published recipe: ModelOpt exclude_modules, synth.RECIPES).
LINEAR_ROLES = ("attention", "mlp", "experts", "shared_expert")


@dataclass
class Term:
    name: str
    bytes: int
    mechanism: str
    source: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "bytes": int(self.bytes), "mechanism": self.mechanism, "source": self.source}


@dataclass
class Settings:
    engine: str = "vllm"
    context: int | None = None
    kv_dtype: str = "auto"
    mem_fraction: float | None = None
    swa_ratio: float | None = None
    max_seqs: int | None = None
    tp: int = 1
    text_only: bool = False
    max_batched_tokens: int | None = None
    weights_bytes_override: int | None = None
    cudagraph_bytes: int = 0
    ubatch: int = 512
    kv_unified: bool = True   # llama.cpp: one KV stream shared by the -np sequences (-kvu); False: one per sequence
    n_gpu_layers: int | None = None   # llama.cpp -ngl (None: all layers and the output on the GPU)
    n_cpu_moe: int = 0                # llama.cpp --n-cpu-moe: experts of the first N layers on the CPU
    tensor_split: tuple[float, ...] | None = None   # llama.cpp -ts: layers over len() GPUs of the kind, these proportions

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Reject every value no engine accepts, before any arithmetic runs on it (``estimate``
        calls it again: the fields are mutable). Limits that depend on the model (``--tp``
        divisibility, ``--context`` above the model maximum) are checked in :func:`estimate`."""
        if self.engine not in ENGINE_KV_DTYPES:
            raise UsageError(f"unknown engine {self.engine!r}", hint=", ".join(ENGINE_KV_DTYPES))
        if self.kv_dtype != "auto" and self.kv_dtype not in KV_DTYPE_BYTES:
            raise UsageError(f"unknown --kv-dtype {self.kv_dtype!r}",
                             hint=f"auto, {', '.join(KV_DTYPE_BYTES)}")
        _at_least("--context", self.context, 1, "leave --context out for the default, min(model maximum, 8192)")
        _at_least("--max-seqs", self.max_seqs, 1, "leave it out for the engine default")
        _at_least("--max-batched-tokens", self.max_batched_tokens, 1, "leave it out for the engine default")
        _at_least("--tp", self.tp, 1, "--tp 1 is one GPU")
        _at_least("ubatch", self.ubatch, 1, "llama.cpp's default n_ubatch is 512")
        _at_least("--ngl", self.n_gpu_layers, 0, "leave --ngl out to put every layer on the GPU")
        _at_least("--n-cpu-moe", self.n_cpu_moe, 0, "0 keeps every expert on the GPU")
        if self.engine != "llamacpp" and (self.n_gpu_layers is not None or self.n_cpu_moe):
            raise UsageError("--ngl and --n-cpu-moe are llama.cpp settings",
                             hint="use --engine llamacpp, or leave them out")
        ts = self.tensor_split
        if ts is not None:
            if self.engine != "llamacpp":
                raise UsageError("--tensor-split is llama.cpp's layer split over several GPUs",
                                 hint="use --engine llamacpp, or --tp for vLLM / SGLang tensor parallelism")
            if not 2 <= len(ts) <= 15:   # common/arg.cpp -ts: fewer than llama_max_devices() (16)
                raise UsageError(f"--tensor-split gives {len(ts)} proportions: one per GPU, 2 to 15 GPUs",
                                 hint="e.g. --tensor-split 1,1 for two GPUs of the --gpu kind")
            # written as a negated test so NaN fails too
            if any(not (isinstance(v, (int, float)) and 0 <= v < math.inf) for v in ts) or not sum(ts) > 0:
                raise UsageError(f"--tensor-split {','.join(map(str, ts))}: proportions must be finite, >= 0 and "
                                 "not all 0", hint="e.g. --tensor-split 3,1")
            if self.tp != 1:
                raise UsageError("--tensor-split and --tp: llama.cpp splits layers, it has no tensor parallelism",
                                 hint="leave --tp out with --engine llamacpp")
        for opt, v in (("--mem-fraction", self.mem_fraction), ("--swa-ratio", self.swa_ratio)):
            # written as a negated range so NaN fails too
            if v is not None and not (isinstance(v, (int, float)) and 0 < v <= 1):
                raise UsageError(f"{opt} {v} must be in (0, 1]", hint="a fraction, e.g. 0.9")
        w = self.weights_bytes_override
        if w is not None and not (isinstance(w, int) and w > 0):
            raise UsageError(f"--weights-gib {_gib_text(w)} must be more than 0",
                             hint="give the weight memory from the engine's load log, in GiB, or leave it out")
        cg = self.cudagraph_bytes
        if not (isinstance(cg, int) and cg >= 0):
            raise UsageError(f"--cudagraph-gib {_gib_text(cg)} must be 0 or more",
                             hint="give the CUDA-graph memory from the engine's log, in GiB")


def _at_least(option: str, value: Any, low: int, hint: str) -> None:
    """None means "the default"; anything else must be an integer >= LOW (bool is not a count)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UsageError(f"{option} {value} must be an integer of at least {low}", hint=hint)


def _gib_text(n: Any) -> str:
    return f"{n / GiB:g}" if isinstance(n, (int, float)) else repr(n)


def gib_to_bytes(option: str, gib: float | None) -> int | None:
    """A GiB figure given on the command line, as bytes; NaN and infinity have no byte count."""
    if gib is None:
        return None
    if not math.isfinite(gib):
        raise UsageError(f"{option} {gib} is not a finite number", hint="give a size in GiB, e.g. 17.8")
    return int(gib * GiB)


# ---------------------------------------------------------------------------------------------
# Tensor parallelism: the sizes an engine accepts for a model

def tp_refusal(arch: ArchInfo, engine: str, tp: int) -> str | None:
    """Why ENGINE refuses to shard ARCH over TP GPUs, or None when it accepts.

    vLLM: ``ModelConfig.verify_with_parallel_config`` (vllm/config) raises unless
    ``num_attention_heads % tensor_parallel_size == 0``; ``QKVParallelLinear.__init__``
    (vllm/model_executor/layers/linear.py) then splits the KV heads when ``tp < num_kv_heads``
    (``divide(num_kv_heads, tp)``) and replicates them when ``tp >= num_kv_heads``
    (``divide(tp, num_kv_heads)``); ``divide`` asserts exact division. SGLang's
    ``QKVParallelLinear`` (python/sglang/srt/layers/linear.py, adapted from vLLM's) has the same
    rule. MLA layers (DeepSeek) shard query heads and replicate the one latent, so only the head
    count constrains them. llama.cpp has no tensor parallelism: ``--split-mode layer`` gives each
    GPU whole layers (``Settings.tensor_split``, estimate_offload.layer_split).
    """
    if tp == 1:
        return None
    if engine == "llamacpp":
        return "llama.cpp has no tensor parallelism (it splits whole layers across GPUs, --split-mode layer)"
    heads = sorted({arch.n_heads} | {l.n_heads for l in arch.layers if l.kind != "none"})
    for h in heads:
        if h % tp:
            return f"{h} attention heads are not divisible by {tp} ({h} % {tp} = {h % tp})"
    for kv in sorted({l.n_kv_heads for l in arch.layers if l.kind != "none" and not l.mla_latent_dim}):
        if tp >= kv and tp % kv:
            return (f"{kv} KV heads are replicated when TP >= {kv}, which needs TP divisible by {kv} "
                    f"({tp} % {kv} = {tp % kv})")
        if tp < kv and kv % tp:
            return f"{kv} KV heads are split when TP < {kv}, which needs {kv} divisible by TP ({kv} % {tp} = {kv % tp})"
    return None


def valid_tps(arch: ArchInfo, engine: str) -> list[int]:
    """Every TP size ENGINE accepts for ARCH (at most the head count: TP must divide it)."""
    return [t for t in range(1, max(1, arch.n_heads) + 1) if tp_refusal(arch, engine, t) is None]


def check_tp(arch: ArchInfo, engine: str, tp: int) -> None:
    why = tp_refusal(arch, engine, tp)
    if why is None:
        return
    if engine == "llamacpp":
        raise UsageError(f"--tp {tp} with --engine llamacpp: {why}",
                         hint="use --tensor-split 1,1 (llama.cpp's layer split over two GPUs), or --engine vllm "
                              "or sglang for tensor parallelism")
    ok = valid_tps(arch, engine)
    near = [t for t in (max((t for t in ok if t < tp), default=None), min((t for t in ok if t > tp), default=None))
            if t is not None]
    raise UsageError(f"--tp {tp} is not a tensor-parallel size {engine} accepts for this model: {why} "
                     f"(valid: {', '.join(map(str, ok))})", hint=f"use {' or '.join(f'--tp {t}' for t in near)}")


# ---------------------------------------------------------------------------------------------
# KV model

def layer_kv_bytes_per_token(layer: LayerAttention, dtype_bytes: float, tp: int = 1) -> float:
    """Bytes one token occupies in one layer's cache (K and V), per GPU.

    K=V layers (Gemma 4 full attention) still cache V: vLLM loads k_proj into both slots,
    SGLang sets v_head_dim = head_dim, llama.cpp passes Vcur = Kcur to build_attn (gemma4-memory.md 1.4).
    MLA caches one latent vector (kv_lora_rank + rope dim) per token, replicated across TP ranks.
    """
    if layer.kv_shared_from is not None or layer.kind == "none":
        return 0.0
    if layer.mla_latent_dim:
        return layer.mla_latent_dim * dtype_bytes
    heads = layer.n_kv_heads
    heads_per_gpu = max(1, math.ceil(heads / tp)) if heads >= tp else 1
    return heads_per_gpu * (layer.head_dim_k + layer.head_dim_v) * dtype_bytes


def kv_summary(arch: ArchInfo, dtype_bytes: float, tp: int = 1) -> dict[str, Any]:
    full = [l for l in arch.layers if l.kind == "full" and l.kv_shared_from is None]
    swa = [l for l in arch.layers if l.kind == "sliding" and l.kv_shared_from is None]
    fb = sum(layer_kv_bytes_per_token(l, dtype_bytes, tp) for l in full)
    sb = sum(layer_kv_bytes_per_token(l, dtype_bytes, tp) for l in swa)
    windows = sorted({l.window for l in swa if l.window})
    return {
        "bytes_per_token_full_layers": _num(fb), "bytes_per_token_sliding_layers": _num(sb),
        "bytes_per_token_if_all_layers_full": _num(fb + sb),
        "n_full_layers": len(full), "n_sliding_layers": len(swa),
        "n_shared_kv_layers": sum(1 for l in arch.layers if l.kv_shared_from is not None),
        "window": windows[0] if windows else None,
        "mla": any(l.mla_latent_dim for l in arch.layers),
    }


def _num(x: float) -> int | float:
    return int(x) if float(x).is_integer() else round(x, 3)


# ---------------------------------------------------------------------------------------------
# Weights

def weight_terms(ckpt: Checkpoint, gpu: GPU, s: Settings) -> list[Term]:
    arch = ckpt.arch
    tensors = list(ckpt.tensors.values())
    vision = sum(t.nbytes for t in tensors if t.role in ("vision", "projector"))
    lm_head = [t for t in tensors if t.role == "lm_head"]
    # tie_word_embeddings with a stored lm_head.weight: vLLM and SGLang alias lm_head to the
    # embedding and never load the stored tensor (vLLM 0.34.0 models/utils.py AutoWeightsLoader
    # skips the aliased VocabParallelEmbedding; 0.19-0.28 skip_prefixes/skip_substrs "lm_head.";
    # SGLang 0.5.23 models/{llama,gemma3_causal,gemma4_causal,qwen3}.py load_weights)
    skipped = sum(t.nbytes for t in lm_head) if (arch and arch.tie_word_embeddings and lm_head
                                                 and s.engine in ("vllm", "sglang")) else 0
    text = sum(t.nbytes for t in tensors) - vision - skipped
    terms = [Term("checkpoint_text", text, "bytes of every stored text-model tensor, scales included "
                  "(NVFP4 = n/2 codes + n/16 E4M3 block scales + fp32 globals)"
                  + (", less the stored lm_head the engine skips (term lm_head)" if skipped else ""),
                  "checkpoint headers")]
    if vision:
        if s.text_only:
            terms.append(Term("vision_tower", 0, "--text-only: the engine skips the vision tower and projector "
                              "(vLLM --limit-mm-per-prompt 0 / language_model_only; SGLang --language-only)"))
        else:
            terms.append(Term("vision_tower", vision, "vision tower + projector are loaded with the model by default",
                              "checkpoint headers"))
    if skipped:
        terms.append(Term("lm_head", 0, f"tie_word_embeddings is true: the stored lm_head ({skipped:,} B, "
                          f"{', '.join(t.name for t in lm_head)}) is not loaded; the output head is the embedding",
                          "vLLM 0.34.0 models/utils.py AutoWeightsLoader (aliased embedding skipped; 0.19-0.28 "
                          "skip_prefixes/skip_substrs 'lm_head.'); SGLang 0.5.23 llama.py/gemma4_causal.py/"
                          "qwen3.py load_weights (lm_head aliased to embed_tokens, not in params_dict)"))
    elif arch and arch.tie_word_embeddings and not lm_head:
        terms.append(Term("lm_head", 0, "tied: lm_head reuses the embedding matrix (no copy at TP=1; vLLM and "
                          "SGLang alias embed_tokens)", "sglang gemma4_causal.py Gemma4ForCausalLM.__init__"))
    # K=V layers: vLLM (and SGLang) load k_proj into both the K and V slots of QKVParallelLinear.
    if arch and s.engine in ("vllm", "sglang"):
        kdup = 0
        for t in tensors:
            if t.role == "attention" and t.proj == "k" and t.layer is not None and t.layer < len(arch.layers) \
                    and arch.layers[t.layer].k_eq_v:
                kdup += t.nbytes
        if kdup:
            terms.append(Term("k_eq_v_duplicate", kdup, "K=V layers have no v_proj; the engine loads k_proj into "
                              "the K and the V slot of its fused QKV weight, so those bytes exist twice",
                              "vLLM models/gemma4.py; SGLang gemma4_causal.py _get_k_eq_v_layers"))
    # Kernel padding and repacks: the same engine model (compat) that names the kernel path decides them.
    if s.engine in ("vllm", "sglang"):
        from . import compat
        from .compat.model import parse_cc

        cc = parse_cc(gpu.compute_capability)
        pad, paths = compat.padding_bytes(ckpt, s.engine, cc, s.tp)
        rules = "; ".join(f"{p.kernel}: {compat.padding_rule(p)}" for p in sorted(paths, key=lambda p: p.id))
        cites = {p.source.cite() for p in paths} | {p.layout.source.cite() for p in paths if p.layout}
        terms.append(Term("kernel_padding", pad, f"on cc {gpu.compute_capability} the engine's kernels zero-pad shapes "
                          f"their tiles do not cover, in memory ({rules or 'no kernel here pads'})",
                          "; ".join(sorted(cites)) or "docs/engine-compat.md"))
    sglang_moe = None
    if s.engine == "sglang":
        sglang_moe = compat.kernel_path("sglang", "moe", "nvfp4", cc, ckpt.format)
    if sglang_moe is not None and sglang_moe.id == "sglang.nvfp4.moe.marlin":
        dead = _sglang_dead_swizzled_scales(tensors)
        if dead:
            terms.append(Term(
                "moe_blockscale_swizzled_unused", dead,
                "SGLang's NVFP4 fused-MoE method allocates w13/w2_blockscale_swizzled in create_weights (the "
                "expert block scales padded to 128 rows x 4 columns, E4M3 bytes, on the GPU); on the Marlin "
                "fallback (8.0 <= cc < 10.0) process_weights_after_loading returns before anything uses or frees "
                "them, so they stay allocated for the server's lifetime",
                "sglang modelopt_quant.py ModelOptNvFp4FusedMoEMethod.create_weights; sgl-project/sglang PR #38092 "
                "(open fix: 'Skip dead blockscale_swizzled allocation on Marlin fallback')"))
    if arch and s.engine in ("vllm", "sglang"):
        # SGLang keeps the cos/sin cache in FP32 on CUDA ("cache needs to be in FP32 for numerical
        # stability": RotaryEmbedding.__init__ casts to the model dtype only off CUDA/HIP/XPU, and
        # forward_cuda hands the FP32 cache to apply_rope_with_cos_sin_cache_inplace for head sizes
        # 64/128/256/512, so it is never cast later); vLLM casts it to the model dtype.
        elem = 4 if s.engine == "sglang" else 2
        rope = _rope_bytes(ckpt, arch, elem)
        if rope:
            if s.engine == "sglang":
                terms.append(Term("rope_cache", rope, "cos/sin cache [max_position_embeddings, rotary_dim] kept in "
                                  "FP32 (4 B) on CUDA, one per distinct RoPE configuration (get_rope caches by "
                                  "head size, rotary dim, base, scaling); Gemma 4's proportional RoPE passes "
                                  "head_size as rotary_dim, so the full layers' cache spans all 512 dims",
                                  "sglang srt/layers/rotary_embedding/base.py RotaryEmbedding.__init__ (FP32 unless "
                                  "not CUDA/HIP/XPU) and forward_cuda; factory.py get_rope (_ROPE_DICT); "
                                  "rope_variant.py Gemma4RotaryEmbedding.__init__"))
            else:
                terms.append(Term("rope_cache", rope, "cos/sin cache [max_position_embeddings, rotary_dim] in the "
                                  "model dtype (2 B), one per distinct RoPE configuration (sliding and full layers "
                                  "differ)", "vLLM rotary_embedding.py RotaryEmbedding._compute_cos_sin_cache"))
    return terms


def _sglang_dead_swizzled_scales(tensors: list[TensorInfo]) -> int:
    """Bytes of SGLang's swizzled copies of the NVFP4 expert block scales: per MoE layer one
    [E, pad128(2 I), pad4(H / 16)] tensor for gate+up (w13) and one [E, pad128(H), pad4(I / 16)]
    for down (w2), whatever the checkpoint's expert layout (per expert, or fused 3-D)."""
    rows: dict[tuple[Any, ...], int] = {}       # (stack, layer, w13|w2, expert or -1) -> rows
    cols: dict[tuple[Any, ...], int] = {}       # (stack, layer, w13|w2) -> block-scale columns
    n_exp: dict[tuple[Any, ...], set[int]] = {}
    for t in tensors:
        if t.role != "experts" or t.layer is None or t.scheme.name != "nvfp4" or len(t.shape) < 2:
            continue
        key = (t.stack, t.layer, "w2" if t.proj == "down" else "w13")
        e = -1 if t.n_experts_fused else (t.expert if t.expert is not None else -1)
        rows[key + (e,)] = rows.get(key + (e,), 0) + t.shape[-2]   # gate + up rows make w13
        cols[key] = -(-t.shape[-1] // 16)
        n_exp.setdefault(key, set()).update(range(t.n_experts_fused) if t.n_experts_fused else {e})
    widest: dict[tuple[Any, ...], int] = {}   # (stack, layer, w13|w2) -> the most rows of any expert
    for k, v in rows.items():
        widest[k[:3]] = max(widest.get(k[:3], 0), v)
    total = 0
    for key, c in cols.items():
        total += len(n_exp[key]) * (-(-widest[key] // 128) * 128) * (-(-c // 4) * 4)
    return total


def _rope_bytes(ckpt: Checkpoint, arch: ArchInfo, elem_bytes: int = 2) -> int:
    """Bytes of the cos/sin caches: [max_position, rotary_dim] of ELEM_BYTES per distinct RoPE: the
    engines build one rotary embedding per distinct set of parameters and share it between layers
    (vLLM get_rope's cache), so sliding and full layers cost one each only where their RoPE differs
    (Gemma 3's local base, Gemma 4's per-type parameters and head size), and one in all for
    gpt-oss, Gemma 2 or Mistral."""
    if arch.max_position_embeddings is None or any(l.mla_latent_dim for l in arch.layers):
        return 0
    differ = _rope_differs_by_layer_kind(text_config(ckpt.config or {}))
    dims = {(l.kind if differ else "", l.head_dim_k) for l in arch.layers}
    return sum(arch.max_position_embeddings * hd * elem_bytes for _, hd in dims)


def _rope_differs_by_layer_kind(cfg: Mapping[str, Any]) -> bool:
    """Whether sliding and full layers have RoPE parameters of their own: transformers 5 writes
    them per layer type (rope_parameters {"full_attention": ..., "sliding_attention": ...}),
    earlier Gemma 3 configs a rope_local_base_freq beside rope_theta."""
    rp = cfg.get("rope_parameters")
    if isinstance(rp, Mapping) and isinstance(rp.get("full_attention"), Mapping) \
            and isinstance(rp.get("sliding_attention"), Mapping):
        return rp["full_attention"] != rp["sliding_attention"]
    local = cfg.get("rope_local_base_freq")
    return local is not None and local != cfg.get("rope_theta")


# ---------------------------------------------------------------------------------------------

@dataclass
class Result:
    report: dict[str, Any]
    fits: bool
    loads: bool = True     # the engine is expected to load and run it on this GPU (compat)


def _resolve_kv_dtype(ckpt: Checkpoint, s: Settings) -> str:
    dt = s.kv_dtype
    if dt == "auto":
        # vLLM/SGLang "auto" = the model dtype (bf16 for these checkpoints); llama.cpp defaults to f16.
        dt = "fp16" if s.engine == "llamacpp" else "bf16"
    if dt not in ENGINE_KV_DTYPES[s.engine]:
        raise UsageError(f"--kv-dtype {dt} is not a {s.engine} cache type",
                         hint=f"{s.engine} supports: {', '.join(ENGINE_KV_DTYPES[s.engine])}")
    return dt


def estimate(ckpt: Checkpoint, gpu: GPU, s: Settings, *, suggest: bool = True) -> Result:
    """Size CKPT on GPU under S. ``margin_bytes`` is the memory left over (negative: missing) once
    the weights, the engine's overheads and the KV cache ONE request needs at the context are
    placed (``capacity.required_kv_bytes``); it fits when the margin is >= 0. When it does not fit
    and SUGGEST is set, ``suggestions`` holds the estimate re-run with one change each (those runs
    compute no suggestions of their own)."""
    s.check()
    arch = ckpt.arch
    if arch is None:
        raise FormatError(f"{ckpt.source}: no architecture description to size the KV cache (expected config.json "
                          "with num_hidden_layers, hidden_size and num_attention_heads, found none)",
                          hint="estimate needs config.json (or GGUF metadata) beside the weights")
    if gpu.memory_total_bytes <= 0:
        raise UsageError(f"GPU memory {gpu.memory_total_bytes} B must be more than 0",
                         hint="give --vram a size such as 24GiB")
    check_tp(arch, s.engine, s.tp)
    maxpos = arch.max_position_embeddings
    context = s.context if s.context is not None else min(maxpos or 8192, 8192)
    if maxpos and context > maxpos:
        raise UsageError(f"--context {context} is larger than the model's maximum ({maxpos} tokens, "
                         "max_position_embeddings)", hint=f"use --context {maxpos} or less")
    kv_dtype = _resolve_kv_dtype(ckpt, s)
    b = KV_DTYPE_BYTES[kv_dtype]
    kv = kv_summary(arch, b, s.tp)

    terms = weight_terms(ckpt, gpu, s)
    notes: list[str] = []
    weights_total = sum(t.bytes for t in terms)
    weights_gpu = -(-weights_total // s.tp)
    if s.weights_bytes_override is not None:
        notes.append(f"weights taken from --weights-gib ({s.weights_bytes_override / GiB:.2f} GiB) instead of the "
                     f"predicted {weights_gpu / GiB:.2f} GiB")
        weights_gpu = s.weights_bytes_override
    if s.tp > 1:
        notes.append(f"--tp {s.tp}: weights split evenly across GPUs (replicated norms/routers ignored); KV heads "
                     "split when there are more KV heads than GPUs, replicated otherwise")

    from .estimate_engines import ENGINES   # (imports this module: the accountings use its KV model and terms)

    engine_fn = ENGINES[s.engine]
    eng, margin = engine_fn(ckpt, arch, gpu, s, kv_dtype, b, context, weights_gpu, notes)
    # One rule for every engine: it fits when the weights, the overheads and one request's KV all
    # fit. Floor, so a fractional deficit (SGLang's cell is fractional) never rounds up to 0.
    fits = margin >= 0
    margin_bytes = math.floor(margin)
    decode = _decode_ceiling(ckpt, arch, gpu, s, b, context)
    engine_compat = _engine_compat(ckpt, gpu, s, kv_dtype, notes)

    report = {
        "schema": SCHEMA,
        "tool_version": __version__,
        "source": ckpt.source,
        "format": ckpt.format,
        "gpu": {"key": gpu.key, "name": gpu.name, "memory_total_bytes": gpu.memory_total_bytes,
                "bandwidth_bytes_per_s": gpu.bandwidth_bytes_per_s, "compute_capability": gpu.compute_capability,
                "fp4": gpu.fp4, "fp8_tensor_cores": gpu.fp8_tensor_cores},
        "engine": s.engine,
        "settings": {"context": context, "kv_dtype": kv_dtype, "tp": s.tp, "text_only": s.text_only,
                     **{k: v for k, v in eng.pop("settings").items()}},
        "weights": {"bytes_total": weights_total, "bytes_per_gpu": weights_gpu,
                    "terms": [t.as_dict() for t in terms]},
        "kv": {"dtype": kv_dtype, "bytes_per_element": _num(b), **kv},
        **eng,
        "fits": fits,
        "margin_bytes": margin_bytes,
        "shortfall_bytes": 0 if fits else -margin_bytes,
        "suggestions": _suggestions(ckpt, gpu, s, kv_dtype, context) if (suggest and not fits) else [],
        "decode": decode,
        "engine_compat": engine_compat,
        "notes": notes,
    }
    from .launch import launch_command

    report["launch"] = launch_command(report, s.kv_dtype)
    return Result(report, fits, engine_compat["loads"])


def _engine_compat(ckpt: Checkpoint, gpu: GPU, s: Settings, kv_dtype: str, notes: list[str]) -> dict[str, Any]:
    """What the estimated engine does with this checkpoint on this GPU (the kernel path assumed
    by the padding terms above, and what would stop it loading). llama.cpp and a safetensors
    checkpoint: the estimate is for the GGUF ``nvfp4tools convert --to gguf`` writes."""
    from . import compat
    from .compat.model import ENGINE_NAMES, parse_cc

    cc = None if s.engine == "llamacpp" else parse_cc(gpu.compute_capability)
    a = compat.assess(ckpt, compat.Target(s.engine, cc, (gpu.key,), s.tp, kv_dtype))
    found = [f if not (f.code == "engine_format" and s.engine == "llamacpp") else compat.lowered(f)
             for f in a.findings]
    loads = not any(f.severity == "error" for f in found)
    if a.paths:
        notes.insert(0, f"{ENGINE_NAMES[s.engine]} {a.release.version} on sm_{gpu.compute_capability.replace('.', '')}: "
                     + "; ".join(f"{u.path.weights} {u.path.layer} ({u.n_tensors}) -> {u.path.kernel} {u.path.compute}"
                                 for u in a.paths))
    for f in found:
        if f.severity != "info" or f.code == "engine_format":
            notes.insert(0, f"[{f.severity}] {f.message}")
    d = compat.as_dict(a)
    d["findings"] = [compat.finding_dict(f) for f in found]
    d["loads"] = loads
    return d


# ---------------------------------------------------------------------------------------------
# Suggestions: the same estimate with one setting changed

def _suggestions(ckpt: Checkpoint, gpu: GPU, s: Settings, kv_dtype: str, context: int) -> list[dict[str, Any]]:
    arch = ckpt.arch
    assert arch is not None  # estimate() refused it otherwise

    def run(change: str, ck: Checkpoint = ckpt, **changed: Any) -> dict[str, Any]:
        r = estimate(ck, gpu, dataclasses.replace(s, **changed), suggest=False).report
        return {"change": change, "settings": changed, "fits": r["fits"], "margin_bytes": r["margin_bytes"],
                "weights_bytes_per_gpu": r["weights"]["bytes_per_gpu"],
                "kv_pool_tokens": r["capacity"].get("kv_pool_tokens", 0),
                "max_concurrency": r["capacity"].get("max_concurrency", 0)}

    out: list[dict[str, Any]] = []
    if "fp8" in ENGINE_KV_DTYPES[s.engine] and not kv_dtype.startswith("fp8"):
        out.append(run("--kv-dtype fp8", kv_dtype="fp8"))

    def fits_at(c: int) -> bool:
        return estimate(ckpt, gpu, dataclasses.replace(s, context=c), suggest=False).fits

    # Every engine's one-request KV grows with the context, so "fits" is monotone in it: bisect.
    if context > 1 and fits_at(1):
        lo, hi = 1, context  # fits at lo, not at hi
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits_at(mid) else (lo, mid)
        out.append(run(f"--context {lo}", context=lo))

    tps = [t for t in valid_tps(arch, s.engine) if s.tp < t <= SUGGEST_MAX_TP]
    for i, t in enumerate(tps):
        changed: dict[str, Any] = {"tp": t}
        if s.weights_bytes_override is not None:
            # --weights-gib is one GPU's share at --tp s.tp; at TP t each GPU holds s.tp/t of it
            changed["weights_bytes_override"] = -(-s.weights_bytes_override * s.tp // t)
        sug = run(f"--tp {t}", **changed)
        if sug["fits"] or i == len(tps) - 1:  # the smallest that fits, else the largest tried
            out.append(sug)
            break

    q = _as_nvfp4(ckpt)
    if q is not None:
        if s.weights_bytes_override is None:
            out.append(run("a 4-bit checkpoint (NVFP4 linears)", q))
        else:
            # a logged weight figure: take off what NVFP4 saves per GPU, as predicted
            now = -(-sum(t.bytes for t in weight_terms(ckpt, gpu, s)) // s.tp)
            then = -(-sum(t.bytes for t in weight_terms(q, gpu, s)) // s.tp)
            out.append(run("a 4-bit checkpoint (NVFP4 linears)", q,
                           weights_bytes_override=max(1, s.weights_bytes_override - (now - then))))
    return out


def _as_nvfp4(ckpt: Checkpoint) -> Checkpoint | None:
    """CKPT with its unquantized Linear weights stored as NVFP4 (None when there are none): per
    [.., rows, cols] tensor rows x cols/2 bytes of E2M1 codes, rows x cols/16 E4M3 block scales and
    a 4-byte fp32 global per matrix (schemes.NVFP4; ModelOpt weight_scale_2). Roles and tensors
    otherwise unchanged, so every weight term (Marlin padding, K=V duplicate, SGLang's swizzled
    expert scales) is predicted for it as for a real NVFP4 checkpoint."""
    tensors: dict[str, TensorInfo] = {}
    changed = 0
    for name, t in ckpt.tensors.items():
        if t.role in LINEAR_ROLES and len(t.shape) >= 2 and not t.scheme.quantized:
            lead = math.prod(t.shape[:-2])
            rows, cols = lead * t.shape[-2], t.shape[-1]
            parts = (
                TensorPart("data", name, "", 0, rows * -(-cols // 2), "U8", t.shape[:-1] + (-(-cols // 2),)),
                TensorPart("block_scale", name + "_scale", "", 0, rows * -(-cols // 16), "F8_E4M3",
                           t.shape[:-1] + (-(-cols // 16),)),
                TensorPart("global_scale", name + "_scale_2", "", 0, 4 * lead, "F32", t.shape[:-2]),
            )
            t = dataclasses.replace(t, scheme=NVFP4, parts=parts)
            changed += 1
        tensors[name] = t
    return dataclasses.replace(ckpt, tensors=tensors) if changed else None


# ---------------------------------------------------------------------------------------------

def _decode_ceiling(ckpt: Checkpoint, arch: ArchInfo, gpu: GPU, s: Settings, b: float, context: int) -> dict[str, Any]:
    """Bandwidth-bound tokens/s at batch 1: every active weight byte and the KV of one sequence
    read once per token (lm_head included: tied, it is the embedding matrix)."""
    active = 0.0
    frac = (arch.n_experts_active / arch.n_experts) if arch.n_experts and arch.n_experts_active else 1.0
    has_lm_head = any(t.role == "lm_head" for t in ckpt.tensors.values())
    for t in ckpt.tensors.values():
        if t.role in ("vision", "projector"):
            continue
        if t.role == "experts":
            active += t.nbytes * frac
        elif t.role == "embedding":
            active += t.nbytes if (arch.tie_word_embeddings and not has_lm_head and "per_layer" not in t.name) else 0
        else:
            active += t.nbytes
    kv_read = 0.0
    for l in arch.layers:
        per = layer_kv_bytes_per_token(l, b, s.tp)
        n = min(context, l.window) if (l.kind == "sliding" and l.window) else context
        kv_read += per * n
    per_gpu = (active / s.tp) + kv_read
    tps = gpu.bandwidth_bytes_per_s / per_gpu if per_gpu else 0.0
    return {"active_weight_bytes": int(active), "kv_read_bytes": int(kv_read), "bytes_per_token_per_gpu": int(per_gpu),
            "tokens_per_s_ceiling": round(tps, 1)}
