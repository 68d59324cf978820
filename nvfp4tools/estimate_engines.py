"""How each engine turns the GPU's memory into a KV pool, for :func:`nvfp4tools.estimate.estimate`:
vLLM v1 (profile run, hybrid KV groups with page-size unification), SGLang (``mem_fraction_static``
of free memory, hybrid SWA pools), llama.cpp (iSWA cache, 256-cell padding). Each returns the
engine's report section and the margin (``../shared/docs/gemma4-memory.md``; the sources per term
are in the terms)."""

from __future__ import annotations

import math
from typing import Any

from .estimate import (CUBLAS_WORKSPACE, LLAMA_PAD, VLLM_BLOCK, GiB, Term, _num, layer_kv_bytes_per_token)
from .gpus import context_overhead_bytes, context_words
from .model import ArchInfo

# ---------------------------------------------------------------------------------------------
# KV terms for --explain: what one token costs per layer kind, and how many tokens each kind holds

def kv_per_token(arch: ArchInfo, b: float, tp: int, kv_dtype: str) -> dict[str, tuple[float, str]]:
    """Per layer kind (full, sliding) with a cache: (bytes per token, how they add up): layers x KV
    heads per GPU x (K head dim + V head dim) x bytes per element. K=V layers (Gemma 4 full
    attention) still cache V; layers sharing another layer's cache cost nothing; MLA caches one
    latent per token."""
    out: dict[str, tuple[float, str]] = {}
    for kind in ("full", "sliding"):
        layers = [l for l in arch.layers if l.kind == kind and l.kv_shared_from is None]
        if not layers:
            continue
        shapes: dict[tuple, int] = {}
        for l in layers:
            heads = 0 if l.mla_latent_dim else (max(1, math.ceil(l.n_kv_heads / tp)) if l.n_kv_heads >= tp else 1)
            key = (heads, l.head_dim_k, l.head_dim_v, l.mla_latent_dim, l.k_eq_v, l.window)
            shapes[key] = shapes.get(key, 0) + 1
        parts = []
        per_tok = 0.0
        for (heads, hk, hv, mla, keqv, window), n in shapes.items():
            if mla:
                t = n * mla * b
                parts.append(f"{n} MLA layers x latent {mla} x {_fmt_b(b)} B = {_num(t):,} B")
            else:
                t = n * heads * (hk + hv) * b
                parts.append(f"{n} layers x {heads} KV heads/GPU x (K {hk} + V {hv}) x {_fmt_b(b)} B = {_num(t):,} B"
                             + (" (K=V: V cached anyway)" if keqv else ""))
            per_tok += t
        shared = sum(1 for l in arch.layers if l.kind == kind and l.kv_shared_from is not None)
        win = layers[0].window if kind == "sliding" else None
        what = "; ".join(parts) + f" per token ({kv_dtype})"
        if shared:
            what += f"; {shared} layers share another layer's cache (no bytes)"
        if win:
            what += f"; window {win}"
        out[kind] = (per_tok, what)
    return out


def kv_layer_terms(arch: ArchInfo, b: float, tp: int, kv_dtype: str, cells: dict[str, tuple[int, str]],
                   suffix: str, source: str) -> list[Term]:
    """One term per layer kind, named ``kv_<kind>_layers<SUFFIX>``: :func:`kv_per_token` times the
    tokens CELLS gives that kind (kind -> (tokens, how the engine arrives at them))."""
    out: list[Term] = []
    for kind, (per_tok, what) in kv_per_token(arch, b, tp, kv_dtype).items():
        n_cells, how = cells.get(kind, (0, "not sized"))
        out.append(Term(f"kv_{kind}_layers{suffix}", int(per_tok * n_cells), f"{what}; x {n_cells:,} tokens: {how}",
                        source))
    return out


def _fmt_b(b: float) -> str:
    return f"{b:g}" if float(b).is_integer() else f"{b:.5g}"


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
    cap: dict[str, Any] = {"kv_pool_bytes": max(0, int(kv_pool)), "required_kv_bytes": 0}
    margin = kv_pool  # nothing to cache (no attention layer): only the pool's sign matters
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
        # vLLM refuses to start unless one request of max_model_len fits in the pool
        # (kv_cache_utils.check_enough_kv_cache_memory); counted against the signed pool, so
        # weights over the budget show in full. need * bytes_per_block is a whole number of
        # blocks, so margin >= 0 exactly when num_blocks >= need.
        margin = kv_pool - need * bytes_per_block
        cap.update({
            "required_kv_bytes": need * bytes_per_block,
            "num_blocks": num_blocks, "bytes_per_block": bytes_per_block, "n_kv_cache_groups": len(groups),
            "groups": [{"kind": g["kind"], "window": g["window"], "block_size": g["block_size"],
                        "n_layers": len(g["layers"])} for g in groups],
            "blocks_per_request": need,
            "max_concurrency": round(concurrency, 3),
            "kv_pool_tokens": int(concurrency * context),
            "kv_pool_tokens_legacy": legacy_tokens,
        })
        blocks = {g["kind"]: g["block_size"] for g in groups}
        sw_tokens = next((min(g["window"] - 1 + mbt, context) for g in groups if g["kind"] == "sliding"), 0)
        terms += kv_layer_terms(arch, b, s.tp, kv_dtype, {
            "full": (context, "one request of --context tokens"),
            "sliding": (sw_tokens, "one request: min(window - 1 + max_num_batched_tokens, context)")},
            "_per_request", "vLLM v1/kv_cache_interface.py FullAttentionSpec / SlidingWindowSpec")
        terms.append(Term("kv_blocks", num_blocks * bytes_per_block,
                          f"page = {VLLM_BLOCK} tokens x the largest per-layer bytes/token = {page:,} B; smaller pages "
                          f"get bigger blocks ({', '.join(f'{k} {v} tokens' for k, v in blocks.items())}); "
                          f"{len(groups)} groups of up to {gsize} layers share one pool of blocks of {gsize} pages: "
                          f"num_blocks = pool // {bytes_per_block:,} B = {num_blocks:,}; one request needs {need} "
                          "blocks (full: cdiv(context, block); sliding: cdiv(min(window - 1 + "
                          "max_num_batched_tokens, context), block) + 1)",
                          "vLLM v1/core/kv_cache_utils.py unify_kv_cache_spec_page_size, "
                          "_get_kv_cache_groups_uniform_page_size, get_num_blocks"))
        notes.append("vLLM logs 'GPU KV cache size: N tokens': since ~0.2x that is max_concurrency x max_model_len "
                     "(kv_pool_tokens); the 0.19-era line users compare against is num_blocks // groups x block "
                     "(kv_pool_tokens_legacy), which charges every layer at full length")
    return ({"memory": {"terms": [t.as_dict() for t in terms]}, "capacity": cap,
             "settings": {"mem_fraction": util, "max_batched_tokens": mbt, "max_seqs": max_seqs}}, margin)


# ---------------------------------------------------------------------------------------------
# SGLang

# SGLang 0.5.23 handle_gpu_memory_settings: GPU-memory tiers (MiB) -> (chunked_prefill_size, decode
# CUDA-graph max_bs at TP < 4, at TP >= 4) (sglang/srt/arg_groups/memory_hook.py L89-176)
SGLANG_TIERS = ((20 * 1024, 2048, 8, 8), (35 * 1024, 4096, 48, 160), (60 * 1024, 4096, 32, 160),
                (90 * 1024, 8192, 256, 512), (160 * 1024, 8192, 256, 512), (float("inf"), 16384, 512, 512))


def sglang_prefill_graph_sizes(max_bs: int) -> list[int]:
    """generate_prefill_cuda_graph_batch_sizes (sglang/srt/arg_groups/cuda_graph_hook.py L480-497)."""
    sizes = (list(range(4, 33, 4)) + list(range(48, 257, 16)) + list(range(288, 513, 32))
             + list(range(576, 1025, 64)) + list(range(1280, 4097, 256)) + list(range(4608, max_bs + 1, 512)))
    return [x for x in sizes if x <= max_bs]


def sglang_default_mem_fraction(ckpt, arch, gpu, s) -> tuple[float, list[Term]]:
    """SGLang's mem_fraction_static when --mem-fraction-static is not given, as
    handle_gpu_memory_settings computes it (sglang 0.5.23 sglang/srt/arg_groups/memory_hook.py
    L281-343, reserve_for_graph_mb L357-397, adjust_mem_fraction_for_vlm L417-462):

    ``round((gpu_mem - reserved) / gpu_mem, 3)`` with gpu_mem the GPU's memory in MiB and
    ``reserved = 512 + 1.5 x max(chunked_prefill_size, 2048) + tp x pp / 8 x 1024 + 2 x decode
    graph max_bs + 8 x len(prefill graph sizes)`` MiB (1536 instead of the last term for MLA
    models), at least 10 GiB above 60 GiB of memory; a multimodal model that loads its vision
    tower is then scaled by ``0.95 x clamp(1 - 0.1 x (vit_layers x vit_hidden^2 / (24 x 1024^2) -
    1), 0.8, 1.05)``. The chunk and graph sizes follow the GPU-memory tiers (SGLANG_TIERS).
    Post-capture KV sizing (SGLANG_ENABLE_POST_CAPTURE_KV_SIZING, off by default), DeepEP, DP
    attention and PD disaggregation are not modelled."""
    gpu_mem = gpu.memory_total_bytes / 2**20
    chunk, bs_lo, bs_hi = next((c, lo, hi) for top, c, lo, hi in SGLANG_TIERS if gpu_mem < top)
    if s.max_batched_tokens is not None:      # estimate's --max-batched-tokens is SGLang's chunk too
        chunk = s.max_batched_tokens
    decode_bs = bs_lo if s.tp < 4 else bs_hi
    mla = any(l.mla_latent_dim for l in arch.layers)
    # non-MLA prefill graphs capture up to the chunk; MLA ones up to min(8192, chunk)
    prefill = 1536 if mla else 8 * len(sglang_prefill_graph_sizes(chunk))
    act = 1.5 * max(chunk, 2048)
    par = s.tp * 1 / 8 * 1024
    reserved = 512 + act + par + 2 * decode_bs + prefill
    floor = gpu_mem > 60 * 1024 and reserved < 10 * 1024
    if floor:
        reserved = 10 * 1024
    mfs = round((gpu_mem - reserved) / gpu_mem, 3)
    src = "sglang 0.5.23 arg_groups/memory_hook.py handle_gpu_memory_settings"
    terms = [Term("default_reserved_mib", int(reserved * 2**20),
                  f"--mem-fraction-static not given: reserved = 512 + 1.5 x max(chunked_prefill_size {chunk}, 2048) "
                  f"+ tp {s.tp} x pp 1 / 8 x 1024 + 2 x decode graph max_bs {decode_bs} + "
                  + ("1536 (MLA prefill graphs)" if mla else f"8 x {prefill // 8} prefill graph sizes")
                  + f" MiB = {512 + act + par + 2 * decode_bs + prefill:g} MiB"
                  + (", raised to the 10 GiB floor above 60 GiB" if floor else "")
                  + f"; mem_fraction_static = round(({gpu_mem:.0f} - {reserved:g}) / {gpu_mem:.0f}, 3) = {mfs} "
                  "(gpu_mem is nvidia-smi's total in SGLang, a few hundred MiB above the driver total used here)",
                  src)]
    vc = (ckpt.config or {}).get("vision_config")
    if arch.has_vision and not s.text_only and isinstance(vc, dict):
        layers = vc.get("num_hidden_layers", 24)
        hidden = vc.get("hidden_size", 1024)
        ratio = layers * hidden**2 / (24 * 1024**2)
        factor = 0.95 * max(0.8, min(1.05, 1.0 - 0.1 * (ratio - 1.0)))
        mfs2 = mfs * factor
        terms.append(Term("default_vlm_adjustment", 0,
                          f"multimodal model with its vision tower ({layers} layers x hidden {hidden}: "
                          f"{ratio:.3f}x a ViT-L/14): mem_fraction_static x 0.95 x clamp(1 - 0.1 x ({ratio:.3f} - 1), "
                          f"0.8, 1.05) = {mfs} x {factor:.4f} = {mfs2:.4f} (--text-only, i.e. --language-model-only, "
                          "skips it)", "sglang 0.5.23 arg_groups/memory_hook.py adjust_mem_fraction_for_vlm"))
        mfs = mfs2
    return mfs, terms


def _sglang(ckpt, arch, gpu, s, kv_dtype, b, context, weights, notes):
    default_terms: list[Term] = []
    if s.mem_fraction is not None:
        mfs = s.mem_fraction
    else:
        mfs, default_terms = sglang_default_mem_fraction(ckpt, arch, gpu, s)
        if mfs <= 0:
            notes.append(f"SGLang's default mem_fraction_static is {mfs:.3f} on this GPU (its reserve is larger than "
                         "the memory): nothing is left for weights and KV; pass --mem-fraction")
    ctx = context_overhead_bytes(gpu)
    pre_free = gpu.memory_total_bytes - ctx
    kv_pool = int(mfs * pre_free - weights)
    full = [l for l in arch.layers if l.kind == "full" and l.kv_shared_from is None]
    swa = [l for l in arch.layers if l.kind == "sliding" and l.kv_shared_from is None]
    full_tok = sum(layer_kv_bytes_per_token(l, b, s.tp) for l in full)
    swa_tok = sum(layer_kv_bytes_per_token(l, b, s.tp) for l in swa)
    terms = [
        Term("free_before_load", pre_free, f"total {gpu.memory_total_bytes} B minus the CUDA context "
             f"({context_words(gpu)})", "gpus.json context_fixed_bytes; bench/cuda_context.py"),
        Term("static", int(mfs * pre_free), f"mem_fraction_static {mfs} of the memory free before load holds weights "
             "+ KV pool; the rest is left for activations and CUDA graphs",
             "sglang model_runner_kv_cache_mixin / pool_configurator"),
        Term("weights", weights, "free-memory drop during load (see weights.terms)"),
    ] + default_terms
    if s.tp > 1:
        notes.append(f"SGLang at TP {s.tp} measures the memory free before loading after distributed "
                     "initialisation, as the minimum over ranks (distributed/bootstrap.py "
                     "measure_pre_model_load_memory): NCCL's and the custom all-reduce's buffers (sized at run "
                     "time) are charged against the pool and are not in this estimate; the default "
                     "mem_fraction_static reserves tp / 8 GiB for them")
    if gpu.fp4 != "native" and any(t.scheme.name == "nvfp4" for t in ckpt.tensors.values()) \
            and s.weights_bytes_override is None:
        notes.append("SGLang on a GPU without FP4 tensor cores (Marlin fallback): the weights include SGLang's unused "
                     "swizzled copies of the expert block scales (term moe_blockscale_swizzled_unused; gone once "
                     "sgl-project/sglang PR #38092 lands). Published Gemma-4 NVFP4 logs on an RTX 3090 show 17.81 "
                     "GiB (all-linear) and 20.07 GiB (experts-only) where this model predicts 17.38 and 19.60 GiB "
                     "(-2.4%, -2.3%); the remaining 0.43-0.47 GiB has no mechanism found in SGLang's code "
                     "(docs/estimate-figures.md), and the KV pool is what is left after the weights, so it moves "
                     "by that much. For exact pool sizes pass the 'Load weight end ... mem usage' figure from your "
                     "log as --weights-gib")
    cap: dict[str, Any] = {"kv_pool_bytes": max(0, kv_pool)}
    r = None
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
        # The least full-pool size that starts and serves one request: the request's context,
        # and a SWA pool (int(full x r) tokens) above window + 1 page.
        need_full = max(context, math.ceil((window + 2) / r))
        while int(need_full * r) < window + 2:   # float rounding of the ceil above
            need_full += 1
        required = need_full * cell
        cap.update({"cell_bytes": _num(cell), "swa_ratio": r, "full_pool_tokens": full_tokens,
                    "swa_pool_tokens": swa_tokens, "kv_pool_tokens": full_tokens, "max_concurrency": round(conc, 3),
                    "required_kv_bytes": math.ceil(required)})
        margin = kv_pool - required
        terms.append(Term("kv_pool", max(0, kv_pool), f"cell = full {_num(full_tok)} B + {r} x sliding "
                          f"{_num(swa_tok)} B per token; full tokens = pool // cell, SWA tokens = full x ratio",
                          "sglang HybridSWAPoolConfigurator"))
        terms += kv_layer_terms(arch, b, s.tp, kv_dtype, {
            "full": (full_tokens, f"full pool = kv_pool // cell ({_num(cell):,} B)"),
            "sliding": (swa_tokens, f"SWA pool = int(full pool x --swa-ratio {r})")},
            "", "sglang model_runner_kv_cache_mixin / HybridSWAPoolConfigurator (cell = full + r x sliding)")
    else:
        cell = full_tok + swa_tok
        tokens = int(max(0, kv_pool) // cell) if cell else 0
        required = context * cell   # one request's context in the token pool
        terms += kv_layer_terms(arch, b, s.tp, kv_dtype, {
            k: (tokens, f"kv_pool // cell ({_num(cell):,} B, every layer)") for k in ("full", "sliding")},
            "", "sglang model_runner_kv_cache_mixin profile_max_num_token (max_total_num_tokens = rest // cell)")
        cap.update({"cell_bytes": _num(cell), "kv_pool_tokens": tokens,
                    "max_concurrency": round(tokens / context, 3), "required_kv_bytes": math.ceil(required)})
        margin = kv_pool - required
    return ({"memory": {"terms": [t.as_dict() for t in terms]}, "capacity": cap,
             "settings": {"mem_fraction": round(mfs, 4), "mem_fraction_default": s.mem_fraction is None,
                          "swa_ratio": r}}, margin)


# ---------------------------------------------------------------------------------------------
# llama.cpp

def _pad(x: int, n: int) -> int:
    return -(-x // n) * n


def _llamacpp(ckpt, arch, gpu, s, kv_dtype, b, context, weights, notes):
    from .estimate_offload import layer_split

    n_seq = s.max_seqs or 1
    n_ctx = _pad(context * n_seq, LLAMA_PAD)  # unified cache: n_ctx cells shared by the sequences
    # without -kvu every sequence has its own stream of n_ctx / n_seq cells (llama-kv-cache.cpp:
    # n_stream = unified ? 1 : n_seq_max; llama-model.cpp create_memory passes cparams.n_ctx_seq)
    n_stream = 1 if s.kv_unified or n_seq == 1 else n_seq
    n_ctx_seq = n_ctx // n_stream
    ub = s.ubatch
    split = layer_split(ckpt, arch, s.n_gpu_layers, s.n_cpu_moe, s.tensor_split)
    n_dev = len(split["layer_weight_bytes"])
    dev_kv = [0.0] * n_dev
    full_bytes = swa_bytes = cpu_kv = 0.0
    swa_cells = None
    for il, l in enumerate(arch.layers):
        per = layer_kv_bytes_per_token(l, b, s.tp)
        if per == 0:
            continue
        if l.kind == "sliding" and l.window:
            # llama-kv-cache-iswa.cpp: size_swa = GGML_PAD(min(size_base, n_swa * (unified ? n_seq_max : 1)
            # + n_ubatch), 256) cells per stream
            swa_cells = n_stream * _pad(min(n_ctx_seq, l.window * (n_seq if n_stream == 1 else 1) + ub), LLAMA_PAD)
            cells = swa_cells
        else:
            cells = n_ctx
        if il < len(split["on_gpu"]) and not split["on_gpu"][il]:
            cpu_kv += cells * per                      # the layer's cache lives with the layer (offload_kqv)
            continue
        if il < len(split["device"]):
            dev_kv[split["device"][il]] += cells * per
        if l.kind == "sliding" and l.window:
            swa_bytes += cells * per
        else:
            full_bytes += cells * per
    kv_total = int(full_bytes + swa_bytes)
    logits = ub * arch.vocab_size * 4
    hidden_act = ub * arch.hidden_size * 4 * 8
    # the attention masks, graph inputs sized for the whole cache (llama-graph.cpp
    # build_attn_inp_kq_mask: [n_kv, n_tokens / n_stream, 1, n_stream], f16 under flash attention,
    # which the launch command's -fa auto / on gives on CUDA): one over the full cache, one over the
    # SWA cells
    has_full = any(l.kind != "sliding" and layer_kv_bytes_per_token(l, b, s.tp) for l in arch.layers)
    mask_full = (n_ctx // n_stream) * ub * 2 if has_full else 0
    mask_swa = (swa_cells // n_stream) * ub * 2 if swa_cells else 0
    compute = (logits if split["output_on_gpu"] else 0) + hidden_act + mask_full + mask_swa
    budget = gpu.memory_total_bytes - context_overhead_bytes(gpu)
    gpu_weights = max(0, weights - split["cpu_weight_bytes"])
    offloaded = split["all_on_gpu"]
    terms = [
        Term("budget", budget, f"total memory minus the CUDA context ({context_words(gpu)})",
             "gpus.json context_fixed_bytes; bench/cuda_context.py"),
        Term("weights", gpu_weights, "all layers offloaded (-ngl all): GGUF tensor bytes" if offloaded else
             f"-ngl {split['n_gpu_layers']}: {split['layers_on_gpu']} of {split['n_layers']} layers"
             + (" and the output layer" if split["output_on_gpu"] else "") + " on the GPU"
             + (f", experts of the first {s.n_cpu_moe} layers on the CPU" if s.n_cpu_moe else "")
             + f"; {split['cpu_weight_bytes']:,} B of weights stay in system RAM",
             "llama.cpp llama-model.cpp load_tensors (i_gpu_start = n_layer + 1 - ngl); common/arg.cpp --n-cpu-moe"),
        Term("kv_full_layers", int(full_bytes), f"{n_ctx} cells (n_ctx x -np {n_seq}, padded to {LLAMA_PAD}) x "
             "per-token bytes of the full-attention layers on the GPU", "llama.cpp llama-kv-cache.cpp"),
        Term("kv_sliding_layers", int(swa_bytes), (f"{swa_cells} cells = PAD(min(n_ctx, window x n_seq + n_ubatch "
             f"{ub}), 256) per sliding layer on the GPU") if n_stream == 1 else
             (f"{swa_cells} cells = {n_stream} streams (no -kvu) x PAD(min(n_ctx / n_seq, window + n_ubatch {ub}), "
              "256) per sliding layer on the GPU"), "llama.cpp llama-kv-cache-iswa.cpp"),
        Term("compute_buffer", compute, f"n_ubatch {ub} x (fp32 logits over the vocabulary"
             + ("" if split["output_on_gpu"] else ", on the CPU with the output layer,")
             + " + a few fp32 hidden-size activations; an estimate) + the f16 attention masks, n_ubatch x "
             f"{n_ctx // n_stream} cells" + (f" and x {swa_cells // n_stream} SWA cells" if mask_swa else ""),
             "llama.cpp llama-graph.cpp build_attn_inp_kq_mask; ggml-backend graph allocation"),
    ]
    # the KV terms above count cells; say what each cell holds
    for kind, (_, what) in kv_per_token(arch, b, s.tp, kv_dtype).items():
        for t in terms:
            if t.name == f"kv_{kind}_layers":
                t.mechanism = what + "; " + t.mechanism
    # llama.cpp allocates the whole cache (n_ctx cells for -np sequences) at start, so that is
    # what must fit, not one request's share of it
    margin = budget - (gpu_weights + kv_total + compute)
    devices = None
    if s.tensor_split:
        # -ts: every device must hold its own layers, their cache and its compute buffer (the
        # logits on the output layer's device); the weights outside the layers (output norm,
        # output matrix) go with the output layer
        out_dev = split["output_device"] if split["output_device"] is not None else n_dev - 1
        w_dev = list(split["layer_weight_bytes"])
        w_dev[out_dev] += gpu_weights - sum(w_dev)
        devices = []
        for d in range(n_dev):
            layers = [il for il, x in enumerate(split["device"]) if x == d]
            kinds = {arch.layers[il].kind == "sliding" and bool(arch.layers[il].window) for il in layers}
            c = hidden_act + (logits if d == split["output_device"] else 0) + (mask_full if False in kinds else 0) \
                + (mask_swa if True in kinds else 0)
            devices.append({"device": d, "proportion": s.tensor_split[d], "layers": len(layers),
                            "first_layer": layers[0] if layers else None, "last_layer": layers[-1] if layers else None,
                            "output_layer": d == split["output_device"], "weight_bytes": int(w_dev[d]),
                            "kv_bytes": int(dev_kv[d]), "compute_bytes": int(c),
                            "margin_bytes": math.floor(budget - (w_dev[d] + dev_kv[d] + c))})
        margin = min(x["margin_bytes"] for x in devices)
        terms[0] = Term("budget", budget * n_dev, f"{n_dev} GPUs x (total memory minus the CUDA context, "
                        f"{context_words(gpu)})", "gpus.json context_fixed_bytes; bench/cuda_context.py")
        terms[-1] = Term("compute_buffer", sum(x["compute_bytes"] for x in devices),
                         f"one per GPU: n_ubatch {ub} x a few fp32 hidden-size activations, the f16 attention masks "
                         "of the layer kinds it holds, and the fp32 logits over the vocabulary on the output "
                         "layer's GPU", terms[-1].source)
        notes.append(f"-ts {','.join(f'{v:g}' for v in s.tensor_split)} over {n_dev} x {gpu.key}: "
                     + "; ".join(f"GPU{x['device']} layers "
                                 + (f"{x['first_layer']}-{x['last_layer']}" if x["layers"] else "none")
                                 + (" + output" if x["output_layer"] else "")
                                 + f", margin {x['margin_bytes'] / GiB:.2f} GiB" for x in devices)
                     + "; the smallest margin is the one reported (each GPU must fit)")
    cap = {"n_ctx": n_ctx, "n_seq": n_seq, "swa_cells": swa_cells, "kv_bytes": kv_total,
           "kv_pool_bytes": kv_total, "kv_pool_tokens": n_ctx, "max_concurrency": n_seq,
           "required_kv_bytes": kv_total}
    if kv_dtype in ("q8_0", "q4_0"):
        notes.append("quantized V cache in llama.cpp needs flash attention (-fa)")
    offload = {k: v for k, v in split.items() if k not in ("on_gpu", "device", "layer_weight_bytes")}
    if devices is not None:
        offload["devices"] = devices
    offload.update({"gpu_weight_bytes": gpu_weights, "cpu_kv_bytes": int(cpu_kv),
                    "system_ram_bytes": split["cpu_weight_bytes"] + int(cpu_kv)
                    + (0 if split["output_on_gpu"] else logits)})
    if not offloaded:
        notes.append(f"partial offload: {offload['system_ram_bytes'] / GiB:.2f} GiB of system RAM for the CPU "
                     "layers' weights and KV cache (mmap'd weights count as page cache); CPU layers run at "
                     "system-memory bandwidth, and the decode ceiling above assumes every weight on the GPU")
    return ({"memory": {"terms": [t.as_dict() for t in terms]}, "capacity": cap, "offload": offload,
             "settings": {"n_seq": n_seq, "ubatch": ub, "kv_unified": n_stream == 1,
                          **({"tensor_split": list(s.tensor_split)} if s.tensor_split else {})}}, margin)


ENGINES = {"vllm": _vllm, "sglang": _sglang, "llamacpp": _llamacpp}
