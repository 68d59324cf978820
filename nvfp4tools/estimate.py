"""``estimate``: weight VRAM, KV bytes per token, KV-pool tokens and concurrency for a GPU and
an engine, from a checkpoint's headers (stdlib only).

Each number is a sum of named terms, each with the mechanism that produces it and its source
(``terms``/``explain``). Engine accounting follows ``../shared/docs/gemma4-memory.md``:
vLLM v1 (``gpu_worker.determine_available_memory``, ``kv_cache_utils``), SGLang
(``mem_fraction_static`` of free memory, hybrid SWA pools), llama.cpp (iSWA cache, 256 padding).
No term is a constant fitted to one published figure; what cannot be explained is said in ``notes``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ._version import __version__
from .errors import UsageError
from .gpus import GPU, context_overhead_bytes
from .model import ArchInfo, Checkpoint, LayerAttention, TensorInfo

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
    text = sum(t.nbytes for t in tensors) - vision
    terms = [Term("checkpoint_text", text, "bytes of every stored text-model tensor, scales included "
                  "(NVFP4 = n/2 codes + n/16 E4M3 block scales + fp32 globals)", "checkpoint headers")]
    if vision:
        if s.text_only:
            terms.append(Term("vision_tower", 0, "--text-only: the engine skips the vision tower and projector "
                              "(vLLM --limit-mm-per-prompt 0 / language_model_only; SGLang --language-only)"))
        else:
            terms.append(Term("vision_tower", vision, "vision tower + projector are loaded with the model by default",
                              "checkpoint headers"))
    lm_head = [t for t in tensors if t.role == "lm_head"]
    if arch and arch.tie_word_embeddings and not lm_head:
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
    # Marlin: pads N of each NVFP4 linear to a multiple of 64 on GPUs without FP4 tensor cores.
    if gpu.fp4 != "native" and s.engine in ("vllm", "sglang"):
        pad = 0
        for t in tensors:
            if t.scheme.name == "nvfp4" and len(t.shape) >= 2:
                n = t.shape[-2]
                extra_rows = (-n) % 64
                if extra_rows:
                    lead = 1
                    for d in t.shape[:-2]:
                        lead *= d
                    pad += lead * extra_rows * (t.shape[-1] // 2 + t.shape[-1] // 16)
        terms.append(Term("marlin_padding", pad, f"cc {gpu.compute_capability} has no FP4 tensor cores: NVFP4 runs as "
                          "Marlin W4A16 (4 bits/weight kept, scales re-encoded to S0E5M3 bytes); only N-padding to a "
                          "multiple of 64 adds bytes", "vLLM marlin_utils_fp4.py (prepare_fp4_layer_for_marlin)"))
    if s.engine == "sglang" and gpu.fp4 != "native" and 8 <= gpu.cc_major < 10:
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
        rope = _rope_bytes(ckpt, arch)
        if rope:
            terms.append(Term("rope_cache", rope, "cos/sin cache [max_position_embeddings, rotary_dim] in the model "
                              "dtype (2 B), one per distinct RoPE configuration (sliding and full layers differ)",
                              "vLLM/SGLang rotary_embedding.py RotaryEmbedding._compute_cos_sin_cache"))
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
    total = 0
    for key, c in cols.items():
        r = max(v for k, v in rows.items() if k[:3] == key)
        total += len(n_exp[key]) * (-(-r // 128) * 128) * (-(-c // 4) * 4)
    return total


def _rope_bytes(ckpt: Checkpoint, arch: ArchInfo) -> int:
    if arch.max_position_embeddings is None or any(l.mla_latent_dim for l in arch.layers):
        return 0
    dims = {(l.kind, l.head_dim_k) for l in arch.layers}
    return sum(arch.max_position_embeddings * hd * 2 for _, hd in dims)


# ---------------------------------------------------------------------------------------------

@dataclass
class Result:
    report: dict[str, Any]
    fits: bool


def _resolve_kv_dtype(ckpt: Checkpoint, s: Settings) -> str:
    dt = s.kv_dtype
    if dt == "auto":
        # vLLM/SGLang "auto" = the model dtype (bf16 for these checkpoints); llama.cpp defaults to f16.
        dt = "fp16" if s.engine == "llamacpp" else "bf16"
    if dt not in ENGINE_KV_DTYPES[s.engine]:
        raise UsageError(f"--kv-dtype {dt} is not a {s.engine} cache type",
                         hint=f"{s.engine} supports: {', '.join(ENGINE_KV_DTYPES[s.engine])}")
    return dt


def estimate(ckpt: Checkpoint, gpu: GPU, s: Settings) -> Result:
    arch = ckpt.arch
    if arch is None:
        raise UsageError(f"{ckpt.source}: no architecture description (config.json or GGUF metadata) to size the KV cache")
    if s.engine not in ENGINE_KV_DTYPES:
        raise UsageError(f"unknown engine {s.engine!r}", hint="vllm, sglang, llamacpp")
    if s.tp < 1:
        raise UsageError("--tp must be at least 1")
    maxpos = arch.max_position_embeddings
    context = s.context or min(maxpos or 8192, 8192)
    if context < 1:
        raise UsageError(f"--context {context} must be positive")
    if maxpos and context > maxpos:
        raise UsageError(f"--context {context} is larger than the model's maximum ({maxpos} tokens, "
                         "max_position_embeddings)", hint=f"use --context {maxpos} or less")
    if s.mem_fraction is not None and not (0 < s.mem_fraction <= 1):
        raise UsageError(f"--mem-fraction {s.mem_fraction} must be in (0, 1]")
    if s.swa_ratio is not None and not (0 < s.swa_ratio <= 1):
        raise UsageError(f"--swa-ratio {s.swa_ratio} must be in (0, 1]")
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
                     "split when there are at least as many heads as GPUs, replicated otherwise")

    engine_fn = {"vllm": _vllm, "sglang": _sglang, "llamacpp": _llamacpp}[s.engine]
    eng, fits, margin = engine_fn(ckpt, arch, gpu, s, kv_dtype, b, context, weights_gpu, notes)
    decode = _decode_ceiling(ckpt, arch, gpu, s, b, context)

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
        "margin_bytes": int(margin),
        "decode": decode,
        "notes": notes,
    }
    return Result(report, fits)


# ---------------------------------------------------------------------------------------------
# vLLM

def _vllm_groups(arch: ArchInfo, b: float, tp: int) -> list[dict[str, Any]]:
    """KV-cache groups of vLLM's hybrid allocator with page-size unification.

    Each attention layer gets a spec (full or sliding window) with page = block x per-token bytes.
    ``unify_kv_cache_spec_page_size`` raises the block size of smaller-page layers until all pages
    are equal; ``_get_kv_cache_groups_uniform_page_size`` then groups layers of one type in groups
    of ``min(#layers per type)`` (when the largest type has at least 1.5x as many layers), all
    groups sharing one pool of equal-size blocks (gemma4-memory.md 2.2).
    """
    types: dict[tuple, list[int]] = {}
    for i, l in enumerate(arch.layers):
        per_tok = layer_kv_bytes_per_token(l, b, tp)
        if per_tok == 0:
            continue
        key = (l.kind, l.window if l.kind == "sliding" else None, per_tok)
        types.setdefault(key, []).append(i)
    if not types:
        return []
    page = max(VLLM_BLOCK * k[2] for k in types)
    counts = [len(v) for v in types.values()]
    lo, hi = min(counts), max(counts)
    group_size = lo if hi >= 1.5 * lo else hi
    groups = []
    for (kind, window, per_tok), layers in types.items():
        block = int(round(page / per_tok))
        for j in range(math.ceil(len(layers) / group_size)):
            groups.append({"kind": kind, "window": window, "block_size": block, "layers": layers[j * group_size:(j + 1) * group_size]})
    for g in groups:
        g["page_bytes"] = int(page)
    return groups


def _vllm(ckpt, arch, gpu, s, kv_dtype, b, context, weights, notes):
    util = s.mem_fraction if s.mem_fraction is not None else 0.9
    large = gpu.memory_total_bytes >= 70 * GiB
    mbt = s.max_batched_tokens or (8192 if large else 2048)
    max_seqs = s.max_seqs or (1024 if large else 256)
    requested = math.ceil(gpu.memory_total_bytes * util)
    vocab = arch.vocab_size
    widest = max(2 * (arch.intermediate_size or 0), 2 * (arch.n_experts_active or 0) * (arch.expert_intermediate_size or 0))
    qkv = max((l.n_heads * l.head_dim_k + 2 * l.n_kv_heads * l.head_dim_k) for l in arch.layers)
    act_fwd = mbt * 2 * (4 * arch.hidden_size + qkv + widest) // s.tp
    # fp32 logits (4 B) + the top-k/top-p sort's fp32 values (4 B) and int64 indices (8 B) per element
    sampler = max_seqs * vocab * (4 + 4 + 8)
    terms = [
        Term("requested", requested, f"gpu_memory_utilization {util} x total memory {gpu.memory_total_bytes} B",
             "vLLM v1/worker/utils.py request_memory"),
        Term("weights", weights, "model weights (see weights.terms)"),
        Term("activation_forward", act_fwd, f"profile run with max_num_batched_tokens={mbt}: bf16 activations of "
             "the widest layer (residual, norm, attention q/k/v, gate/up or top-k expert gate/up) held at once",
             "vLLM gpu_worker.determine_available_memory (torch peak during profile_run)"),
        Term("activation_sampler", sampler, f"dummy sampler run over max_num_seqs={max_seqs} x vocab {vocab}: "
             "fp32 logits plus the top-k/top-p sort (fp32 values + int64 indices), 16 B per element",
             "vLLM gpu_model_runner._dummy_sampler_run exercises the sorting path (detail UNVERIFIED)"),
        Term("non_torch", CUBLAS_WORKSPACE, "cuBLAS workspace allocated outside the torch caching allocator "
             "(NCCL buffers add more under --tp)", "torch CUBLAS_WORKSPACE_CONFIG default"),
        Term("cudagraph", s.cudagraph_bytes, "CUDA-graph memory subtracted since vLLM 0.21 "
             "(VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS); not modelled, pass --cudagraph-gib from a log",
             "vLLM PR #30515, issue #45178"),
    ]
    kv_pool = requested - weights - act_fwd - sampler - CUBLAS_WORKSPACE - s.cudagraph_bytes
    groups = _vllm_groups(arch, b, s.tp)
    fits = kv_pool > 0 and bool(groups)
    cap: dict[str, Any] = {"kv_pool_bytes": max(0, int(kv_pool))}
    margin = kv_pool
    if groups:
        page = groups[0]["page_bytes"]
        gsize = max(len(g["layers"]) for g in groups)
        bytes_per_block = gsize * page
        num_blocks = max(0, int(kv_pool) // bytes_per_block)
        min_block = min(g["block_size"] for g in groups)
        legacy_tokens = num_blocks // len(groups) * min_block

        def per_request_blocks(L: int) -> int:
            n = 0
            for g in groups:
                if g["kind"] == "sliding":
                    # SlidingWindowSpec.max_admission_blocks_per_request
                    n += math.ceil(min(g["window"] - 1 + mbt, L) / g["block_size"]) + 1
                else:
                    n += math.ceil(L / g["block_size"])
            return n

        need = per_request_blocks(context)
        concurrency = num_blocks / need if need else 0.0
        fits = fits and concurrency >= 1.0
        margin = (num_blocks - need) * bytes_per_block
        cap.update({
            "num_blocks": num_blocks, "bytes_per_block": bytes_per_block, "n_kv_cache_groups": len(groups),
            "groups": [{"kind": g["kind"], "window": g["window"], "block_size": g["block_size"],
                        "n_layers": len(g["layers"])} for g in groups],
            "blocks_per_request": need,
            "max_concurrency": round(concurrency, 3),
            "kv_pool_tokens": int(concurrency * context),
            "kv_pool_tokens_legacy": legacy_tokens,
        })
        notes.append("vLLM logs 'GPU KV cache size: N tokens': since ~0.2x that is max_concurrency x max_model_len "
                     "(kv_pool_tokens); the 0.19-era line users compare against is num_blocks // groups x block "
                     "(kv_pool_tokens_legacy), which charges every layer at full length")
    return ({"memory": {"terms": [t.as_dict() for t in terms]}, "capacity": cap,
             "settings": {"mem_fraction": util, "max_batched_tokens": mbt, "max_seqs": max_seqs}}, fits, margin)


# ---------------------------------------------------------------------------------------------
# SGLang

def _sglang(ckpt, arch, gpu, s, kv_dtype, b, context, weights, notes):
    mfs = s.mem_fraction if s.mem_fraction is not None else 0.88
    ctx = context_overhead_bytes()
    pre_free = gpu.memory_total_bytes - ctx
    kv_pool = int(mfs * pre_free - weights)
    full = [l for l in arch.layers if l.kind == "full" and l.kv_shared_from is None]
    swa = [l for l in arch.layers if l.kind == "sliding" and l.kv_shared_from is None]
    full_tok = sum(layer_kv_bytes_per_token(l, b, s.tp) for l in full)
    swa_tok = sum(layer_kv_bytes_per_token(l, b, s.tp) for l in swa)
    terms = [
        Term("free_before_load", pre_free, f"total {gpu.memory_total_bytes} B minus the CUDA context "
             f"({ctx} B, measured free-vs-total gap at start)", "gemma4-memory.md section 6"),
        Term("static", int(mfs * pre_free), f"mem_fraction_static {mfs} of the memory free before load holds weights "
             "+ KV pool; the rest is left for activations and CUDA graphs",
             "sglang model_runner_kv_cache_mixin / pool_configurator"),
        Term("weights", weights, "free-memory drop during load (see weights.terms)"),
    ]
    if gpu.fp4 != "native" and any(t.scheme.name == "nvfp4" for t in ckpt.tensors.values()) \
            and s.weights_bytes_override is None:
        notes.append("SGLang on a GPU without FP4 tensor cores (Marlin fallback): the weights include SGLang's unused "
                     "swizzled copies of the expert block scales (term moe_blockscale_swizzled_unused; gone once "
                     "sgl-project/sglang PR #38092 lands). A published Gemma-4 all-linear NVFP4 log on an RTX 3090 "
                     "shows 17.81 GiB where this model predicts 17.00 GiB (-4.5%); the remaining 0.8 GiB has no "
                     "measured mechanism (docs/estimate-figures.md), and the KV pool is what is left after the "
                     "weights, so it moves by that much. For exact pool sizes pass the 'Load weight end ... mem "
                     "usage' figure from your log as --weights-gib")
    cap: dict[str, Any] = {"kv_pool_bytes": max(0, kv_pool)}
    r = None
    fits = kv_pool > 0
    margin = kv_pool
    if swa and full:
        r = s.swa_ratio if s.swa_ratio is not None else 0.8
        cell = full_tok + r * swa_tok
        full_tokens = int(max(0, kv_pool) // cell)
        swa_tokens = int(full_tokens * r)
        window = swa[0].window or 0
        per_req_swa = min(context, window + (s.max_batched_tokens or 2048))
        conc = min(full_tokens / context, swa_tokens / per_req_swa if per_req_swa else 0)
        ok_swa = swa_tokens > window + 1
        if not ok_swa:
            notes.append(f"SWA pool ({swa_tokens} tokens) is not larger than the window ({window}) + page: "
                         "SGLang refuses to start (validate_swa_pool_size); raise --swa-ratio")
        fits = fits and ok_swa and full_tokens >= context
        cap.update({"cell_bytes": _num(cell), "swa_ratio": r, "full_pool_tokens": full_tokens,
                    "swa_pool_tokens": swa_tokens, "kv_pool_tokens": full_tokens, "max_concurrency": round(conc, 3)})
        margin = (full_tokens - context) * cell
        terms.append(Term("kv_pool", max(0, kv_pool), f"cell = full {_num(full_tok)} B + {r} x sliding "
                          f"{_num(swa_tok)} B per token; full tokens = pool // cell, SWA tokens = full x ratio",
                          "sglang HybridSWAPoolConfigurator"))
    else:
        cell = full_tok + swa_tok
        tokens = int(max(0, kv_pool) // cell) if cell else 0
        fits = fits and tokens >= context
        cap.update({"cell_bytes": _num(cell), "kv_pool_tokens": tokens,
                    "max_concurrency": round(tokens / context, 3)})
        margin = (tokens - context) * cell
    return ({"memory": {"terms": [t.as_dict() for t in terms]}, "capacity": cap,
             "settings": {"mem_fraction": mfs, "swa_ratio": r}}, fits, margin)


# ---------------------------------------------------------------------------------------------
# llama.cpp

def _pad(x: int, n: int) -> int:
    return -(-x // n) * n


def _llamacpp(ckpt, arch, gpu, s, kv_dtype, b, context, weights, notes):
    n_seq = s.max_seqs or 1
    n_ctx = _pad(context * n_seq, LLAMA_PAD)  # unified cache: n_ctx cells shared by the sequences
    ub = s.ubatch
    full_bytes = swa_bytes = 0.0
    swa_cells = None
    for l in arch.layers:
        per = layer_kv_bytes_per_token(l, b, s.tp)
        if per == 0:
            continue
        if l.kind == "sliding" and l.window:
            # llama-kv-cache-iswa.cpp: size_swa = GGML_PAD(min(size_base, n_swa * n_seq + n_ubatch), 256)
            swa_cells = _pad(min(n_ctx, l.window * n_seq + ub), LLAMA_PAD)
            swa_bytes += swa_cells * per
        else:
            full_bytes += n_ctx * per
    kv_total = int(full_bytes + swa_bytes)
    compute = ub * arch.vocab_size * 4 + ub * arch.hidden_size * 4 * 8
    budget = gpu.memory_total_bytes - context_overhead_bytes()
    terms = [
        Term("budget", budget, "total memory minus the CUDA context", "gemma4-memory.md section 6"),
        Term("weights", weights, "all layers offloaded (-ngl 99): GGUF tensor bytes"),
        Term("kv_full_layers", int(full_bytes), f"{n_ctx} cells (n_ctx x -np {n_seq}, padded to {LLAMA_PAD}) x "
             "per-token bytes of the full-attention layers", "llama.cpp llama-kv-cache.cpp"),
        Term("kv_sliding_layers", int(swa_bytes), f"{swa_cells} cells = PAD(min(n_ctx, window x n_seq + n_ubatch "
             f"{ub}), 256) per sliding layer", "llama.cpp llama-kv-cache-iswa.cpp"),
        Term("compute_buffer", compute, f"n_ubatch {ub} x (fp32 logits over the vocabulary + a few fp32 hidden-size "
             "activations)", "llama.cpp ggml-backend graph allocation (estimate)"),
    ]
    used = weights + kv_total + compute
    margin = budget - used
    fits = margin >= 0
    cap = {"n_ctx": n_ctx, "n_seq": n_seq, "swa_cells": swa_cells, "kv_bytes": kv_total,
           "kv_pool_bytes": kv_total, "kv_pool_tokens": n_ctx, "max_concurrency": n_seq}
    if kv_dtype in ("q8_0", "q4_0"):
        notes.append("quantized V cache in llama.cpp needs flash attention (-fa)")
    return ({"memory": {"terms": [t.as_dict() for t in terms]}, "capacity": cap,
             "settings": {"n_seq": n_seq, "ubatch": ub}}, fits, margin)


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
