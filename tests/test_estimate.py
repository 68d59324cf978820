"""estimate: golden formulas on hand-computed configs, properties, published figures, bad input."""

from __future__ import annotations

import copy
import json

import pytest

from nvfp4tools.arch import parse_arch
from nvfp4tools.estimate import KV_DTYPE_BYTES, Settings, estimate, kv_summary, layer_kv_bytes_per_token
from nvfp4tools.gpus import GPU, all_gpus, custom_gpu, get_gpu
from nvfp4tools.synth import GEMMA4_26B_A4B

GiB = 2**30


@pytest.fixture(scope="module")
def g26(tmp_path_factory):
    """Header-only full-size Gemma-4-26B-A4B checkpoints in the three published layouts."""
    from nvfp4tools.formats import read
    from nvfp4tools.synth import synthesize

    out = {}
    for recipe in ("all-linear", "mlp-experts", "experts-only"):
        p = str(tmp_path_factory.mktemp(recipe))
        synthesize(p, preset="gemma4-26b-a4b", fmt="modelopt", recipe=recipe, header_only=True)
        out[recipe] = read(p)
    return out


# -- golden KV formulas ----------------------------------------------------------------------

def test_gemma4_26b_kv_bytes_per_token_exact():
    """Published: FP8 10,240 B over the 5 full layers, 102,400 B over the 25 sliding; BF16 double."""
    a = parse_arch(GEMMA4_26B_A4B)
    fp8 = kv_summary(a, KV_DTYPE_BYTES["fp8"])
    assert (fp8["bytes_per_token_full_layers"], fp8["bytes_per_token_sliding_layers"]) == (10_240, 102_400)
    bf16 = kv_summary(a, KV_DTYPE_BYTES["bf16"])
    assert (bf16["bytes_per_token_full_layers"], bf16["bytes_per_token_sliding_layers"]) == (20_480, 204_800)


def test_hand_computed_llama_kv():
    a = parse_arch({"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
                    "num_key_value_heads": 8, "vocab_size": 128256})
    # 32 layers x 8 heads x (128 + 128) x 2 B = 131,072 B/token
    assert kv_summary(a, 2.0)["bytes_per_token_full_layers"] == 131_072
    # TP 2 splits 8 KV heads 4/4; TP 16 replicates (1 head per GPU)
    assert kv_summary(a, 2.0, tp=2)["bytes_per_token_full_layers"] == 65_536
    assert kv_summary(a, 2.0, tp=16)["bytes_per_token_full_layers"] == 16_384


def test_mla_latent_and_shared_layers():
    d = parse_arch({"model_type": "deepseek_v3", "hidden_size": 7168, "num_hidden_layers": 61,
                    "num_attention_heads": 128, "kv_lora_rank": 512, "qk_rope_head_dim": 64,
                    "qk_nope_head_dim": 128, "v_head_dim": 128, "vocab_size": 129280})
    assert kv_summary(d, 2.0)["bytes_per_token_full_layers"] == 61 * 576 * 2
    cfg = copy.deepcopy(GEMMA4_26B_A4B)
    cfg["text_config"]["num_kv_shared_layers"] = 6
    a = parse_arch(cfg)
    assert layer_kv_bytes_per_token(a.layers[29], 2.0) == 0
    assert kv_summary(a, 1.0)["bytes_per_token_full_layers"] == 4 * 2048


def _tiny_gpu(mem: int) -> GPU:
    return GPU("t", "test", mem, 1_000_000_000_000, "9.0", "marlin", True, sms=132, threads_per_sm=2048)


# The CUDA context (gpus.json): 275,578,880 B measured fixed + SMs x threads per SM x 1 KiB of stack
CTX_H100 = 275_578_880 + 132 * 2048 * 1024       # 552,402,944 B, the whole context measured on an H100
CTX_RTX3090 = 275_578_880 + 82 * 1536 * 1024     # 404,553,728 B


# -- properties --------------------------------------------------------------------------------

@pytest.mark.parametrize("engine", ["vllm", "sglang", "llamacpp"])
def test_more_memory_never_fewer_tokens(g26, engine):
    ck = g26["all-linear"]
    prev = -1
    for gib in (24, 32, 48, 80, 141):
        r = estimate(ck, _tiny_gpu(gib * GiB), Settings(engine=engine, context=8192)).report
        tokens = r["capacity"].get("kv_pool_bytes", 0)
        assert tokens >= prev
        prev = tokens


def test_window_never_costs_more_than_full(g26):
    cfg = copy.deepcopy(GEMMA4_26B_A4B)
    a_swa = parse_arch(cfg)
    cfg["text_config"]["layer_types"] = ["full_attention"] * 30
    a_full = parse_arch(cfg)
    for l_swa, l_full in zip(a_swa.layers, a_full.layers):
        assert layer_kv_bytes_per_token(l_swa, 2.0) <= max(layer_kv_bytes_per_token(l_full, 2.0),
                                                           layer_kv_bytes_per_token(l_swa, 2.0))
    ck = g26["all-linear"]
    for ctx in (1024, 4096, 32768):
        r = estimate(ck, get_gpu("h100-sxm"), Settings(engine="llamacpp", context=ctx)).report
        kv = r["capacity"]["kv_bytes"]
        all_full = ctx * (r["kv"]["bytes_per_token_full_layers"] + r["kv"]["bytes_per_token_sliding_layers"])
        assert kv <= max(all_full, 0) + 256 * 204_800 * 2  # padding aside, never above full attention


# -- published figures (docs/estimate-figures.md) -----------------------------------------------

def rel(a, b):
    return abs(a - b) / b


def test_vllm_rtx5090_fusenai(g26):
    """vLLM 0.19-era, RTX 5090, NVFP4 experts + MLP, BF16 attention, max-model-len 4096:
    weights 17.2 GiB; KV BF16 43K tokens / 15x; FP8 87K / 30x."""
    ck = g26["mlp-experts"]
    bf = estimate(ck, get_gpu("rtx5090"), Settings(engine="vllm", context=4096)).report
    assert rel(bf["weights"]["bytes_per_gpu"] / GiB, 17.2) < 0.05
    assert rel(bf["capacity"]["kv_pool_tokens_legacy"], 43_000) < 0.05
    assert rel(bf["capacity"]["max_concurrency"], 15) < 0.05
    f8 = estimate(ck, get_gpu("rtx5090"), Settings(engine="vllm", context=4096, kv_dtype="fp8")).report
    assert rel(f8["capacity"]["kv_pool_tokens_legacy"], 87_000) < 0.05
    assert rel(f8["capacity"]["max_concurrency"], 30) < 0.05
    # the hybrid allocator's grouping for Gemma 4: 6 groups of 5 layers, full layers at block 32
    assert bf["capacity"]["n_kv_cache_groups"] == 6
    assert {g["kind"]: g["block_size"] for g in bf["capacity"]["groups"]} == {"full": 32, "sliding": 16}
    assert bf["capacity"]["blocks_per_request"] == 1093


def test_sglang_rtx3090_pools(g26):
    """SGLang, RTX 3090, all-linear NVFP4, FP8 KV, mfs 0.91, swa ratio 0.05: full ~232K, SWA ~11.6K,
    KV 3.33 GiB, given the logged weights (17.81 GiB). Within 5%: the published run had 23.22 GiB
    free before loading; the table's 23.58 GiB total (a 2025 driver) less the 0.5 GiB CUDA context
    measured on H100/H200 gives 0.14 GiB less (docs/estimate-figures.md)."""
    s = Settings(engine="sglang", context=8192, kv_dtype="fp8", mem_fraction=0.91, swa_ratio=0.05,
                 weights_bytes_override=int(17.81 * GiB))
    r = estimate(g26["all-linear"], get_gpu("rtx3090"), s).report
    c = r["capacity"]
    assert c["cell_bytes"] == 15_360
    assert rel(c["full_pool_tokens"], 232_000) < 0.05
    assert rel(c["swa_pool_tokens"], 11_600) < 0.05
    assert rel(c["kv_pool_bytes"] / GiB, 3.33) < 0.05


def test_sglang_rtx3090_predicted_weights_within_5_percent(g26):
    """Published 17.81 GiB ("Load weight end ... mem usage"); predicted from named terms only: the
    checkpoint, RoPE caches, the K=V duplicate and SGLang's unused swizzled expert block scales
    (sglang PR #38092: 30 layers x 128 experts x (1408 x 176 + 2816 x 44) bytes = 1.33 GiB). The
    remaining gap is reported in the notes, not fitted."""
    s = Settings(engine="sglang", context=8192, kv_dtype="fp8", mem_fraction=0.91, swa_ratio=0.05)
    r = estimate(g26["all-linear"], get_gpu("rtx3090"), s).report
    terms = {t["name"]: t["bytes"] for t in r["weights"]["terms"]}
    assert terms["moe_blockscale_swizzled_unused"] == 30 * 128 * (1408 * 176 + 2816 * 44)
    assert rel(r["weights"]["bytes_per_gpu"] / GiB, 17.81) < 0.05
    assert any("17.81" in n for n in r["notes"])
    # native FP4 (Blackwell) runs no Marlin fallback, and vLLM has no such copy
    r5 = estimate(g26["all-linear"], get_gpu("rtx5090"), s).report
    assert "moe_blockscale_swizzled_unused" not in {t["name"] for t in r5["weights"]["terms"]}
    rv = estimate(g26["all-linear"], get_gpu("rtx3090"), Settings(engine="vllm", context=8192)).report
    assert "moe_blockscale_swizzled_unused" not in {t["name"] for t in rv["weights"]["terms"]}


def test_llamacpp_iswa_formula(g26):
    """gemma4-memory.md 4.1: f16, one sequence, n_ubatch 512: SWA 25 x 1,536 cells x 8,192 B = 0.293 GiB;
    full 5 x n_ctx x 4,096 B."""
    r = estimate(g26["all-linear"], get_gpu("h100-sxm"), Settings(engine="llamacpp", context=32768)).report
    c = r["capacity"]
    assert c["swa_cells"] == 1536
    assert c["kv_bytes"] == 5 * 32768 * 4096 + 25 * 1536 * 8192
    assert abs(c["kv_bytes"] / GiB - 0.918) < 0.01  # "n_ctx 32K -> 0.92 GiB total"


def test_gpu_table_has_sixteen_with_sources():
    keys = {g.key for g in all_gpus()}
    for k in ("rtx3090", "rtx4090", "rtx5090", "rtx6000-ada", "rtx-pro-6000", "l4", "l40s", "a10g", "a100-40gb",
              "a100-80gb", "h100-pcie", "h100-sxm", "h200", "b200", "gb200", "dgx-spark"):
        assert k in keys
    from nvfp4tools.gpus import table_rows
    for row in table_rows():
        assert row["memory_source"] and row["bandwidth_source"] and row["memory_total_bytes"] > 0


# -- CLI -----------------------------------------------------------------------------------------

def test_cli_estimate_json_and_exit(run_cli, synth_dir):
    p = synth_dir(preset="gemma4-tiny", fmt="modelopt", recipe="all-linear")
    r = run_cli("estimate", p, "--gpu", "rtx4090", "--format", "json", "--context", "2048")
    assert r.exit_code == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["schema"] == "nvfp4tools/estimate/v1" and rep["fits"] is True
    r2 = run_cli("estimate", p, "--vram", "1MiB", "--gpu", "rtx4090", "--context", "2048")
    assert r2.exit_code == 1 and "NO" in r2.stdout


def test_cli_estimate_all_and_gpus(run_cli, synth_dir):
    p = synth_dir(preset="gemma4-tiny", fmt="modelopt", recipe="all-linear")
    r = run_cli("estimate", p, "--gpu", "all", "--format", "json", "--context", "1024")
    rows = json.loads(r.stdout)["rows"]
    assert len(rows) == 16 and all(x["fits"] for x in rows)
    g = run_cli("gpus")
    assert g.exit_code == 0 and "h100-sxm" in g.stdout


@pytest.mark.parametrize("args,needle", [
    (["--gpu", "rtx9999"], "known: rtx3090"),
    (["--context", "999999999"], "larger than the model's maximum"),
    (["--mem-fraction", "1.5"], "must be in (0, 1]"),
    (["--engine", "llamacpp", "--kv-dtype", "fp8"], "not a llamacpp cache type"),
])
def test_cli_estimate_bad_input(run_cli, synth_dir, args, needle):
    p = synth_dir(preset="gemma4-tiny", fmt="modelopt", recipe="all-linear")
    r = run_cli("estimate", p, *args)
    assert r.exit_code == 2, (r.exit_code, r.stderr)
    assert needle in r.stderr and "\n" not in r.stderr.strip()


def test_sglang_unused_swizzled_scales_same_for_both_expert_layouts(tmp_path):
    """Per-expert keys and fused 3-D experts describe the same MoE: the same unused bytes."""
    from nvfp4tools.estimate import _sglang_dead_swizzled_scales
    from nvfp4tools.formats import read
    from nvfp4tools.synth import synthesize

    got = []
    for layout in ("per-expert", "fused"):
        d = str(tmp_path / layout)
        synthesize(d, preset="gemma4-tiny", fmt="modelopt", recipe="all-linear", header_only=True, experts=layout)
        got.append(_sglang_dead_swizzled_scales(list(read(d).tensors.values())))
    assert got[0] == got[1] > 0


# -- margin, shortfall and suggestions (issue 25) -------------------------------------------------

# A Llama-style model small enough to compute every term by hand: 16 layers, 16 heads of 128,
# 4 KV heads, MLP 8192, vocabulary 32000, untied lm_head, all BF16.
SMALL = {"model_type": "llama", "hidden_size": 2048, "num_hidden_layers": 16, "num_attention_heads": 16,
         "num_key_value_heads": 4, "intermediate_size": 8192, "vocab_size": 32000, "max_position_embeddings": 4096}
SMALL_LINEAR_ELEMENTS_PER_LAYER = 2 * 2048 * 2048 + 2 * 512 * 2048 + 3 * 8192 * 2048   # q o, k v, gate up down
SMALL_EMBED_AND_HEAD = 2 * 32000 * 2048 * 2                                             # BF16 bytes


def _bf16(name: str, shape: tuple[int, ...], role: str, proj: str | None = None, layer: int | None = None):
    from nvfp4tools.model import TensorInfo, TensorPart
    from nvfp4tools.schemes import BF16
    n = 1
    for d in shape:
        n *= d
    return TensorInfo(name, shape, BF16, (TensorPart("data", name, "m.safetensors", 0, 2 * n, "BF16", shape),),
                      role=role, proj=proj, layer=layer)


def _hand_ckpt(cfg: dict, source: str = "hand"):
    """A checkpoint as a reader would describe it, built from CFG without a file (heads, KV heads
    and head_dim from CFG; a dense MLP of intermediate_size)."""
    from nvfp4tools.model import Checkpoint
    H, V, I = cfg["hidden_size"], cfg["vocab_size"], cfg["intermediate_size"]
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim", H // nh)
    ts = [_bf16("model.embed_tokens.weight", (V, H), "embedding"), _bf16("lm_head.weight", (V, H), "lm_head")]
    for L in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{L}"
        for proj, shape in (("q", (nh * hd, H)), ("k", (nkv * hd, H)), ("v", (nkv * hd, H)), ("o", (H, nh * hd))):
            ts.append(_bf16(f"{p}.self_attn.{proj}_proj.weight", shape, "attention", proj, L))
        for proj, shape in (("gate", (I, H)), ("up", (I, H)), ("down", (H, I))):
            ts.append(_bf16(f"{p}.mlp.{proj}_proj.weight", shape, "mlp", proj, L))
    return Checkpoint("hand", source, "", {t.name: t for t in ts}, (), 0, config=cfg, arch=parse_arch(cfg))


@pytest.fixture(scope="module")
def small():
    return _hand_ckpt(SMALL)


@pytest.fixture(scope="module")
def bf16_26b(tmp_path_factory):
    """Gemma-4-26B-A4B in BF16 (headers only): 48.47 GiB of weights, twice an RTX 4090."""
    from nvfp4tools.formats import read
    from nvfp4tools.synth import synthesize
    p = str(tmp_path_factory.mktemp("bf16-26b"))
    synthesize(p, preset="gemma4-26b-a4b", fmt="bf16", header_only=True)
    return read(p)


def test_vllm_margin_hand_computed_when_weights_do_not_fit(small):
    """2 GiB GPU, vLLM defaults (util 0.9, 2048 batched tokens, 256 sequences), context 4096."""
    r = estimate(small, _tiny_gpu(2 * GiB), Settings(engine="vllm", context=4096)).report
    requested = 1_932_735_284                        # ceil(2 GiB x 0.9)
    weights = 16 * SMALL_LINEAR_ELEMENTS_PER_LAYER * 2 + SMALL_EMBED_AND_HEAD + 4096 * 128 * 2  # + RoPE cos/sin
    act = 2048 * 2 * (4 * 2048 + (16 + 2 * 4) * 128 + 2 * 8192)   # batched tokens x bf16 x widest layer
    sampler = 256 * 32000 * 16
    one_request = 4096 * 16 * 4 * (128 + 128) * 2   # context x layers x KV heads x (K + V) x 2 B
    pool = requested - weights - act - sampler - 32 * 2**20
    assert r["weights"]["bytes_per_gpu"] == weights == 2_209_349_632
    assert pool < 0  # the weights alone are over the budget: the margin says by how much, in full
    assert r["capacity"]["required_kv_bytes"] == one_request
    assert r["margin_bytes"] == pool - one_request == -554_486_988 - one_request
    assert r["fits"] is False and r["shortfall_bytes"] == -r["margin_bytes"]


def test_sglang_plain_and_llamacpp_margins_hand_computed(small):
    ctx = CTX_H100                                   # CUDA context of a 132-SM, 2048-thread GPU
    one_request = 4096 * 16 * 4 * (128 + 128) * 2
    weights_ckpt = 16 * SMALL_LINEAR_ELEMENTS_PER_LAYER * 2 + SMALL_EMBED_AND_HEAD
    sg = estimate(small, _tiny_gpu(2 * GiB), Settings(engine="sglang", context=4096, mem_fraction=0.88)).report
    # SGLang's RoPE cos/sin cache stays FP32 on CUDA: 4096 positions x 128 dims x 4 B
    pool = int(0.88 * (2 * GiB - ctx) - (weights_ckpt + 4096 * 128 * 4))
    assert pool < 0 and sg["margin_bytes"] == pool - one_request and sg["shortfall_bytes"] == one_request - pool
    lc = estimate(small, _tiny_gpu(2 * GiB), Settings(engine="llamacpp", context=4096)).report
    compute = 512 * 32000 * 4 + 512 * 2048 * 4 * 8   # n_ubatch x (vocab logits + 8 hidden activations) x fp32
    compute += 4096 * 512 * 2                         # the f16 attention mask over the 4096 cells x n_ubatch
    # llama.cpp keeps the input embedding on the CPU (load_tensors: dev_input = cpu) when an output
    # matrix is stored, as here: those 32000 x 2048 x 2 B are not in VRAM
    embed = 32000 * 2048 * 2
    assert lc["margin_bytes"] == (2 * GiB - ctx) - (weights_ckpt - embed) - one_request - compute
    assert lc["margin_bytes"] < -(weights_ckpt - embed - (2 * GiB - ctx))   # all of the weights' excess, and more


def test_cuda_context_scales_with_resident_threads():
    """The context is the measured fixed part plus the stack backing every resident thread: an
    RTX 3090 (82 SMs x 1536 threads) keeps 0.377 GiB, an H100 (132 x 2048) 0.514 GiB, the whole
    gap measured on the H100 (bench/cuda_context.py)."""
    from nvfp4tools.gpus import context_overhead_bytes

    assert context_overhead_bytes(get_gpu("h100-sxm")) == CTX_H100 == 552_402_944
    assert context_overhead_bytes(get_gpu("rtx3090")) == CTX_RTX3090
    for g in all_gpus():
        assert g.sms > 0 and g.threads_per_sm in (1536, 2048), g.key
    # a GPU given only by --vram inherits its model GPU's SMs, so its context too
    assert context_overhead_bytes(custom_gpu(24 * GiB, like=get_gpu("rtx3090"))) == CTX_RTX3090


def test_sglang_hybrid_margin_counts_the_swa_pool_minimum(g26):
    """Hybrid SWA: one request needs `context` full tokens and a SWA pool above window + 1; at
    ratio 0.05 that takes ceil(1026 / 0.05) = 20,520 full tokens of 15,360 B (FP8 cell)."""
    total = get_gpu("rtx3090").memory_total_bytes
    for w, mfs in ((30 * GiB, 0.88), (int(17.81 * GiB), 0.91)):
        s = Settings(engine="sglang", context=8192, kv_dtype="fp8", mem_fraction=mfs, swa_ratio=0.05,
                     weights_bytes_override=w)
        r = estimate(g26["all-linear"], get_gpu("rtx3090"), s).report
        pool = int(mfs * (total - CTX_RTX3090) - w)
        assert r["capacity"]["required_kv_bytes"] == 20_520 * 15_360
        assert r["margin_bytes"] == pool - 20_520 * 15_360
        assert r["fits"] is (pool >= 20_520 * 15_360)


@pytest.mark.parametrize("engine", ["vllm", "sglang", "llamacpp"])
def test_bf16_26b_on_rtx4090_short_by_the_weights(bf16_26b, engine):
    """48.47 GiB of BF16 weights on a 23.65 GiB card: short by more than 24 GiB in every engine
    (not by one sequence's KV cache)."""
    mf = 0.88 if engine == "sglang" else None     # the suggestions, not SGLang's default fraction, under test
    r = estimate(bf16_26b, get_gpu("rtx4090"), Settings(engine=engine, mem_fraction=mf)).report
    assert r["weights"]["bytes_per_gpu"] > 48 * GiB
    assert r["fits"] is False and r["margin_bytes"] <= -24 * GiB and r["shortfall_bytes"] > 24 * GiB
    changes = {x["change"]: x for x in r["suggestions"]}
    assert changes["a 4-bit checkpoint (NVFP4 linears)"]["fits"] is True
    if engine == "llamacpp":
        assert not any(c.startswith("--tp") for c in changes)       # no tensor parallelism to offer
        assert "--kv-dtype fp8" not in changes
    else:
        assert changes["--tp 4"]["fits"] is True and "--tp 2" not in changes  # the smallest that fits
        assert changes["--kv-dtype fp8"]["fits"] is False
    assert not any(c.startswith("--context") for c in changes)      # weights alone do not fit at any context


def test_suggestions_are_reruns(small):
    """Each suggestion is the estimate re-run with that one change: the same margin and fit."""
    g = _tiny_gpu(2 * GiB)
    s = Settings(engine="vllm", context=4096)
    sug = {x["change"]: x for x in estimate(small, g, s).report["suggestions"]}
    assert list(sug) == ["--kv-dtype fp8", "--tp 2", "a 4-bit checkpoint (NVFP4 linears)"]
    for change, kw in (("--kv-dtype fp8", {"kv_dtype": "fp8"}), ("--tp 2", {"tp": 2})):
        again = estimate(small, g, Settings(engine="vllm", context=4096, **kw)).report
        assert (sug[change]["fits"], sug[change]["margin_bytes"]) == (again["fits"], again["margin_bytes"])
        assert sug[change]["settings"] == kw
    assert sug["--tp 2"]["fits"] and not sug["--kv-dtype fp8"]["fits"]
    # NVFP4 linears: n/2 codes + n/16 E4M3 scales + a 4-byte global per matrix (7 per layer)
    nv = sug["a 4-bit checkpoint (NVFP4 linears)"]
    n = SMALL_LINEAR_ELEMENTS_PER_LAYER
    assert nv["weights_bytes_per_gpu"] == 16 * (n // 2 + n // 16 + 7 * 4) + SMALL_EMBED_AND_HEAD + 4096 * 128 * 2
    assert nv["fits"] is True and nv["margin_bytes"] == (1_932_735_284 - nv["weights_bytes_per_gpu"]
                                                         - 2048 * 2 * 27648 - 256 * 32000 * 16 - 32 * 2**20
                                                         - 4096 * 16 * 4 * 256 * 2)


def test_nvfp4_suggestion_matches_a_real_nvfp4_checkpoint(bf16_26b, g26):
    """The what-if NVFP4 weights of the BF16 model are those of the all-linear NVFP4 checkpoint
    (which also stores a 4-byte input_scale per matrix)."""
    s = Settings(engine="vllm", context=8192)
    sug = {x["change"]: x for x in estimate(bf16_26b, get_gpu("rtx4090"), s).report["suggestions"]}
    real = estimate(g26["all-linear"], get_gpu("rtx4090"), s).report["weights"]["bytes_per_gpu"]
    assert abs(sug["a 4-bit checkpoint (NVFP4 linears)"]["weights_bytes_per_gpu"] - real) < 2**20


@pytest.mark.parametrize("engine", ["vllm", "sglang", "llamacpp"])
def test_context_suggestion_is_the_largest_that_fits(g26, engine):
    ck = g26["experts-only"]
    mf = 0.88 if engine == "sglang" else None
    r = estimate(ck, get_gpu("rtx4090"), Settings(engine=engine, context=262144, mem_fraction=mf)).report
    assert r["fits"] is False
    ctx = [x for x in r["suggestions"] if x["change"].startswith("--context")]
    assert len(ctx) == 1 and ctx[0]["fits"]
    c = ctx[0]["settings"]["context"]
    assert ctx[0]["change"] == f"--context {c}"
    assert estimate(ck, get_gpu("rtx4090"), Settings(engine=engine, context=c, mem_fraction=mf)).fits
    assert not estimate(ck, get_gpu("rtx4090"), Settings(engine=engine, context=c + 1, mem_fraction=mf)).fits


def test_suggestions_do_not_recurse(small, monkeypatch):
    import nvfp4tools.estimate as E
    calls = []
    real = E.estimate

    def counting(*a, **kw):
        calls.append(kw.get("suggest", True))
        return real(*a, **kw)

    monkeypatch.setattr(E, "estimate", counting)
    r = counting(small, _tiny_gpu(2 * GiB), Settings(engine="vllm", context=4096)).report
    assert calls.count(True) == 1 and len(calls) > 1 and r["suggestions"]
    assert estimate(small, _tiny_gpu(2 * GiB), Settings(engine="vllm", context=4096), suggest=False).report[
        "suggestions"] == []


def test_tp_suggestion_when_none_fits_is_the_largest_tried(small):
    """256 MiB: even 8 GPUs hold 1/8 of 2.2 GB of weights (276 MB) over vLLM's 0.9 x 256 MiB."""
    r = estimate(small, _tiny_gpu(256 * 2**20), Settings(engine="vllm", context=4096)).report
    tp = [x for x in r["suggestions"] if x["change"].startswith("--tp")]
    assert [(x["change"], x["fits"]) for x in tp] == [("--tp 8", False)]


def test_suggestions_with_a_logged_weight_figure(small):
    """--weights-gib is one GPU's share at the current TP; at TP t each GPU holds 1/t of it."""
    s = Settings(engine="vllm", context=4096, weights_bytes_override=3 * GiB)
    sug = [x for x in estimate(small, _tiny_gpu(2 * GiB), s).report["suggestions"] if x["change"].startswith("--tp")]
    assert sug[0]["settings"]["weights_bytes_override"] == -(-3 * GiB // sug[0]["settings"]["tp"])
    assert sug[0]["weights_bytes_per_gpu"] == sug[0]["settings"]["weights_bytes_override"]
    # the 4-bit checkpoint: the logged figure less what NVFP4 saves, as predicted
    nv = [x for x in estimate(small, _tiny_gpu(2 * GiB), s).report["suggestions"] if "4-bit" in x["change"]][0]
    n = SMALL_LINEAR_ELEMENTS_PER_LAYER
    saved = 16 * n * 2 - 16 * (n // 2 + n // 16 + 7 * 4)
    assert nv["settings"] == {"weights_bytes_override": 3 * GiB - saved}
    assert nv["weights_bytes_per_gpu"] == 3 * GiB - saved


@pytest.mark.parametrize("engine", ["vllm", "sglang", "llamacpp"])
def test_fits_exactly_when_margin_is_not_negative(g26, engine):
    for key in ("rtx3090", "rtx4090", "l4", "h100-sxm"):
        for ctx in (1024, 65536, 262144):
            r = estimate(g26["all-linear"], get_gpu(key), Settings(engine=engine, context=ctx), suggest=False).report
            assert r["fits"] is (r["margin_bytes"] >= 0)
            assert r["shortfall_bytes"] == max(0, -r["margin_bytes"])


def test_cli_bf16_26b_does_not_fit_json_and_table(run_cli, synth_dir):
    jsonschema = pytest.importorskip("jsonschema")
    import os
    p = synth_dir(preset="gemma4-26b-a4b", fmt="bf16", header_only=True)
    r = run_cli("estimate", p, "--gpu", "rtx4090", "--format", "json")
    assert r.exit_code == 1, r.stderr
    rep = json.loads(r.stdout)
    assert rep["margin_bytes"] <= -24 * GiB and rep["shortfall_bytes"] > 24 * GiB
    assert {x["change"] for x in rep["suggestions"] if x["fits"]} == {"--tp 4", "a 4-bit checkpoint (NVFP4 linears)"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "docs", "schema", "estimate.json")) as fh:
        jsonschema.validate(rep, json.load(fh))
    t = run_cli("estimate", p, "--gpu", "rtx4090")
    assert t.exit_code == 1
    assert f"does not fit: short by {rep['shortfall_bytes'] / GiB:.2f} GiB" in t.stdout
    assert "  --tp 4: fits" in t.stdout and "  a 4-bit checkpoint (NVFP4 linears): fits" in t.stdout
    assert "  --kv-dtype fp8: still short by" in t.stdout
    # --gpu all: rows carry the same margin; none fits in 8 GiB, so exit 1
    a = run_cli("estimate", p, "--gpu", "all", "--vram", "8GiB", "--format", "json")
    assert a.exit_code == 1
    rows = json.loads(a.stdout)["rows"]
    assert all(x["margin_bytes"] < -40 * GiB and x["shortfall_bytes"] == -x["margin_bytes"] for x in rows)
    with open(os.path.join(root, "docs", "schema", "estimate-all.json")) as fh:
        jsonschema.validate(json.loads(a.stdout), json.load(fh))


# -- validation ----------------------------------------------------------------------------------

@pytest.mark.parametrize("args,needle", [
    (["--context", "0"], "--context 0 must be an integer of at least 1"),
    (["--weights-gib", "-1"], "--weights-gib -1 must be more than 0"),
    (["--weights-gib", "nan"], "--weights-gib nan is not a finite number"),
    (["--max-seqs", "0"], "--max-seqs 0 must be an integer of at least 1"),
    (["--max-batched-tokens", "0"], "--max-batched-tokens 0 must be an integer of at least 1"),
    (["--mem-fraction", "0"], "--mem-fraction 0.0 must be in (0, 1]"),
    (["--swa-ratio", "1.5"], "--swa-ratio 1.5 must be in (0, 1]"),
    (["--swa-ratio", "0"], "--swa-ratio 0.0 must be in (0, 1]"),
    (["--cudagraph-gib", "-0.5"], "--cudagraph-gib -0.5 must be 0 or more"),
    (["--vram", "24"], "has no unit (expected GB, GiB, MB, MiB, TB, TiB or B) (did you mean 24GiB?)"),
    (["--vram", "24G"], "ambiguous unit"),
    (["--vram", "0GiB"], "must be more than 0 bytes"),
    (["--tp", "0"], "--tp 0 must be an integer of at least 1"),
    (["--tp", "3"], "2 attention heads are not divisible by 3"),
    (["--engine", "llamacpp", "--tp", "2"], "llama.cpp has no tensor parallelism"),
])
def test_cli_estimate_bad_numbers(run_cli, synth_dir, args, needle):
    p = synth_dir(preset="gemma4-tiny", fmt="modelopt", recipe="all-linear")
    r = run_cli("estimate", p, *args)
    assert r.exit_code == 2, (r.exit_code, r.stdout, r.stderr)
    assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_cli_vram_with_unit_accepted(run_cli, synth_dir):
    p = synth_dir(preset="gemma4-tiny", fmt="modelopt", recipe="all-linear")
    r = run_cli("estimate", p, "--vram", "24GiB", "--context", "2048", "--format", "json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["gpu"]["memory_total_bytes"] == 24 * GiB


def test_settings_validate_in_the_library():
    """The `check` gate calls estimate() without click: the library refuses the same values."""
    from nvfp4tools.errors import UsageError
    for kw in ({"context": 0}, {"max_seqs": 0}, {"max_batched_tokens": -1}, {"mem_fraction": 0.0},
               {"swa_ratio": float("nan")}, {"tp": 0}, {"weights_bytes_override": -GiB}, {"weights_bytes_override": 0},
               {"cudagraph_bytes": -1}, {"engine": "tgi"}):
        with pytest.raises(UsageError):
            Settings(**kw)
    assert Settings(context=None).context is None   # None is the default context, not an error


def test_tp_rule_vllm_hand_config():
    """vLLM: heads % tp == 0 (ModelConfig.verify_with_parallel_config); KV heads split when
    tp < kv (kv % tp == 0), replicated when tp >= kv (tp % kv == 0) (QKVParallelLinear)."""
    from nvfp4tools.errors import UsageError
    from nvfp4tools.estimate import tp_refusal, valid_tps
    cfg = dict(SMALL, num_attention_heads=32, num_key_value_heads=8, head_dim=128, hidden_size=4096)
    a = parse_arch(cfg)
    assert valid_tps(a, "vllm") == valid_tps(a, "sglang") == [1, 2, 4, 8, 16, 32]
    assert kv_summary(a, 2.0, tp=16)["bytes_per_token_full_layers"] == 16 * 1 * 256 * 2   # replicated: 1 per GPU
    assert kv_summary(a, 2.0, tp=32)["bytes_per_token_full_layers"] == 16 * 1 * 256 * 2
    assert kv_summary(a, 2.0, tp=4)["bytes_per_token_full_layers"] == 16 * 2 * 256 * 2    # split: 8 / 4
    ck = _hand_ckpt(cfg)
    with pytest.raises(UsageError, match=r"32 attention heads are not divisible by 3 .*valid: 1, 2, 4, 8, 16, 32"):
        estimate(ck, get_gpu("h100-sxm"), Settings(tp=3, context=1024))
    assert estimate(ck, get_gpu("h100-sxm"), Settings(tp=16, context=1024)).report["settings"]["tp"] == 16
    # the KV-head rule on its own: 24 heads, 8 KV heads
    b = parse_arch(dict(cfg, num_attention_heads=24, hidden_size=3072))
    assert valid_tps(b, "vllm") == [1, 2, 4, 8, 24]
    assert "8 KV heads are split when TP < 8" in tp_refusal(b, "vllm", 6)
    assert "8 KV heads are replicated when TP >= 8" in tp_refusal(b, "vllm", 12)
    assert tp_refusal(b, "llamacpp", 2) is not None and tp_refusal(b, "llamacpp", 1) is None


def test_cli_tp_64_on_gemma4_26b_names_heads_and_valid_sizes(run_cli, synth_dir):
    p = synth_dir(preset="gemma4-26b-a4b", fmt="modelopt", recipe="all-linear", header_only=True)
    for engine in ("vllm", "sglang"):
        r = run_cli("estimate", p, "--engine", engine, "--tp", "64")
        assert r.exit_code == 2
        assert "16 attention heads are not divisible by 64" in r.stderr and "valid: 1, 2, 4, 8, 16" in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    assert run_cli("estimate", p, "--tp", "16", "--format", "json").exit_code == 0


def test_cli_missing_config_is_an_input_error(run_cli, synth_dir, tmp_path):
    import shutil
    src = synth_dir(preset="gemma4-tiny", fmt="bf16")
    dst = tmp_path / "no-config"
    shutil.copytree(src, dst)
    (dst / "config.json").unlink()
    r = run_cli("estimate", str(dst))
    assert r.exit_code == 3, (r.exit_code, r.stderr)
    assert "FormatError" in r.stderr and "estimate needs config.json (or GGUF metadata) beside the weights" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
