"""estimate mechanisms read from the engines' code: SGLang's default mem_fraction_static, a stored
lm_head that vLLM and SGLang skip when the embeddings are tied, vLLM's MXFP4 MoE padding."""

from __future__ import annotations

import dataclasses

import pytest

from nvfp4tools.estimate import Settings, weight_terms
from nvfp4tools.estimate_engines import sglang_default_mem_fraction, sglang_prefill_graph_sizes
from nvfp4tools.gpus import get_gpu

from tests.helpers import GiB, MiB, gemma4_26b, report



@pytest.fixture(scope="module")
def g26(tmp_path_factory):
    return gemma4_26b(tmp_path_factory, "all-linear")


def test_prefill_graph_sizes_as_sglang_generates_them():
    assert len(sglang_prefill_graph_sizes(4096)) == 8 + 14 + 8 + 8 + 12
    assert len(sglang_prefill_graph_sizes(8192)) == 50 + 8
    assert sglang_prefill_graph_sizes(16)[-1] == 16


def test_sglang_default_mem_fraction_hand_computed(g26):
    """memory_hook.handle_gpu_memory_settings by hand. RTX 3090 (23.58 GiB = 24,146 MiB, the
    24-35 GiB tier: chunk 4096, decode graphs to bs 48, 50 prefill graph sizes):
    512 + 1.5 x 4096 + 1/8 x 1024 + 2 x 48 + 8 x 50 = 7,280 MiB -> round(16,866 / 24,146, 3);
    Gemma 4's vision tower (27 x 1152^2 = 1.4238 ViT-L) then scales it by 0.95 x 0.95762."""
    a = g26.arch
    gpu = get_gpu("rtx3090")
    mem = gpu.memory_total_bytes / MiB
    text, terms = sglang_default_mem_fraction(g26, a, gpu, Settings(engine="sglang", text_only=True))
    assert text == round((mem - 7280) / mem, 3) and len(terms) == 1
    vlm, terms = sglang_default_mem_fraction(g26, a, gpu, Settings(engine="sglang"))
    ratio = 27 * 1152**2 / (24 * 1024**2)
    assert vlm == pytest.approx(text * 0.95 * (1 - 0.1 * (ratio - 1)))
    assert terms[1].name == "default_vlm_adjustment"
    # H100 SXM (79.18 GiB, the 60-90 GiB tier: chunk 8192, bs 256, 58 prefill sizes):
    # 512 + 12,288 + 128 + 512 + 464 = 13,904 MiB, above the 10 GiB floor
    h = get_gpu("h100-sxm")
    hm = h.memory_total_bytes / MiB
    assert sglang_default_mem_fraction(g26, a, h, Settings(engine="sglang", text_only=True))[0] == \
        round((hm - 13904) / hm, 3)
    # TP 4 on the H100: decode graphs to bs 512 and tp/8 GiB for the parallel buffers
    assert sglang_default_mem_fraction(g26, a, h, Settings(engine="sglang", text_only=True, tp=4))[0] == \
        round((hm - (512 + 12288 + 512 + 1024 + 464)) / hm, 3)
    # a 16 GiB card: below 20 GiB (chunk 2048, bs 8, 42 sizes), no floor: 512 + 3072 + 128 + 16 + 336
    tiny = dataclasses.replace(gpu, memory_total_bytes=16 * GiB)
    assert sglang_default_mem_fraction(g26, a, tiny, Settings(engine="sglang", text_only=True))[0] == \
        round((16384 - 4064) / 16384, 3)


def test_sglang_estimate_uses_the_default_and_says_so(g26):
    r = report(g26, "h100-sxm", engine="sglang", text_only=True)
    assert r["settings"]["mem_fraction_default"] is True
    assert r["settings"]["mem_fraction"] == sglang_default_mem_fraction(
        g26, g26.arch, get_gpu("h100-sxm"), Settings(engine="sglang", text_only=True))[0]
    assert any(t["name"] == "default_reserved_mib" for t in r["memory"]["terms"])
    assert "--mem-fraction-static" in r["launch"]["argv"]
    given = report(g26, "h100-sxm", engine="sglang", mem_fraction=0.9)
    assert given["settings"]["mem_fraction_default"] is False and given["settings"]["mem_fraction"] == 0.9


def _with_stored_lm_head(ck):
    """CK with an lm_head.weight stored beside the tied embedding (as some exporters write it)."""
    emb = next(t for t in ck.tensors.values() if t.role == "embedding" and "per_layer" not in t.name)
    head = dataclasses.replace(emb, name="lm_head.weight", role="lm_head")
    return dataclasses.replace(ck, tensors={**ck.tensors, "lm_head.weight": head}), head.nbytes


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_tied_but_stored_lm_head_is_not_loaded(g26, engine):
    assert g26.arch.tie_word_embeddings
    ck, nbytes = _with_stored_lm_head(g26)
    s = Settings(engine=engine, mem_fraction=0.9)
    plain = report(g26, "h100-sxm", s)
    stored = report(ck, "h100-sxm", s)
    assert stored["weights"]["bytes_total"] == plain["weights"]["bytes_total"]
    t = {x["name"]: x for x in stored["weights"]["terms"]}
    assert t["lm_head"]["bytes"] == 0 and f"{nbytes:,} B" in t["lm_head"]["mechanism"]
    # untied, the stored head is loaded: the weights grow by exactly its bytes
    untied = dataclasses.replace(ck, arch=dataclasses.replace(ck.arch, tie_word_embeddings=False))
    u = report(untied, "h100-sxm", s)
    assert u["weights"]["bytes_total"] == plain["weights"]["bytes_total"] + nbytes


def _gpt_oss_like(n_experts: int = 4, biases: bool = False):
    """One gpt-oss-120b-shaped MoE layer (hidden 2880, expert intermediate 2880) with MXFP4
    experts: n/2 bytes of E2M1 codes + n/32 E8M0 scales per matrix; BIASES adds the BF16
    ``{gate_up,down}_proj_bias`` [E, out] gpt-oss stores beside them."""
    from nvfp4tools.arch import parse_arch
    from nvfp4tools.model import Checkpoint, TensorInfo, TensorPart
    from nvfp4tools.schemes import BF16, MXFP4

    arch = parse_arch({"model_type": "gpt_oss", "hidden_size": 2880, "intermediate_size": 2880,
                       "num_hidden_layers": 1, "num_attention_heads": 64, "num_key_value_heads": 8,
                       "head_dim": 64, "num_local_experts": n_experts, "num_experts_per_tok": 4,
                       "vocab_size": 201088, "sliding_window": 128, "layer_types": ["full_attention"]})
    tensors = {}
    for proj, shape in (("gate_up", (n_experts, 5760, 2880)), ("down", (n_experts, 2880, 2880))):
        n = shape[0] * shape[1] * shape[2]
        name = f"model.layers.0.mlp.experts.{proj}_proj"
        parts = (TensorPart("data", name + "_blocks", "m.safetensors", 0, n // 2, "U8", shape[:-1] + (shape[-1] // 2,)),
                 TensorPart("block_scale", name + "_scales", "m.safetensors", 0, n // 32, "U8",
                            shape[:-1] + (shape[-1] // 32,)))
        tensors[name] = TensorInfo(name, shape, MXFP4, parts, role="experts", proj=proj, layer=0,
                                   stack="model", n_experts_fused=shape[0])
    if not biases:
        return Checkpoint("mxfp4", "gpt-oss-like", "", tensors, (), 0, arch=arch), tensors
    everything = dict(tensors)
    for proj, out in (("gate_up", 5760), ("down", 2880)):
        name = f"model.layers.0.mlp.experts.{proj}_proj_bias"
        part = TensorPart("data", name, "m.safetensors", 0, n_experts * out * 2, "BF16", (n_experts, out))
        everything[name] = TensorInfo(name, (n_experts, out), BF16, (part,), role="experts", layer=0, stack="model")
    return Checkpoint("mxfp4", "gpt-oss-like", "", everything, (), 0, arch=arch), tensors


@pytest.mark.parametrize("gpu,factor", [("rtx4090", 2944 * 3072 / 2880**2),     # Marlin: I to 128, H to 256
                                        ("a100-80gb", 2944 * 3072 / 2880**2),   # Marlin
                                        ("b200", 2944 * 3072 / 2880**2)])       # TRT-LLM: the same rounding
@pytest.mark.parametrize("biases", [False, True])
def test_vllm_mxfp4_moe_padding_gpt_oss(gpu, factor, biases):
    """vLLM's MXFP4 MoE rounding for gpt-oss (fused_moe/oracle/mxfp4.py), as the compat model's
    kernel path gives it, lands in the weights as kernel_padding: +9.04% of the expert bytes off
    Hopper (the biases stay as loaded there; Hopper's Triton path: the test below)."""
    ck, tensors = _gpt_oss_like(biases=biases)
    experts = sum(t.nbytes for t in tensors.values())
    terms = {t.name: t for t in weight_terms(ck, get_gpu(gpu), Settings(engine="vllm"))}
    assert terms["kernel_padding"].bytes == pytest.approx(experts * (factor - 1), rel=1e-6)
    assert "MXFP4 MoE" in terms["kernel_padding"].mechanism
    assert "kernel_padding" not in {t.name for t in weight_terms(ck, get_gpu(gpu), Settings(engine="llamacpp"))}


@pytest.mark.parametrize("tp,created,swizzled,fp32", [
    # gpt-oss-120b's dims at TP 1: 2880 % 64 == 0, so nothing is rounded at creation; the codes
    # [5760, 1440] and [2880, 1440] fill 16 x 32-byte tiles; scale groups 90 -> 92, rows
    # 5760 -> 5888 and 2880 -> 3072; biases (5760 + 2880) x 2 B more per expert
    (1, 0, 4 * ((5888 * 92 - 5760 * 90) + (3072 * 92 - 2880 * 90)), 4 * (5760 + 2880) * 2),
    # TP 2: intermediate 1440 per GPU, 1472 as created (+4.25 bits per added weight); the codes
    # [2944, 1440] and [2880, 736] still fill the tiles; scales: gate/up rows 2944 -> 3072 and
    # groups 90 -> 92, down rows 2880 -> 3072 and groups 46 -> 48; biases: gate/up [2944] FP32
    # against the stored 2880 x 2 B, down [2880] 2 B more on each GPU
    (2, 2 * 4 * ((2944 - 2880) * 2880 + 2880 * (1472 - 1440)) * 17 // 32,
     2 * 4 * ((3072 * 92 - 2944 * 90) + (3072 * 48 - 2880 * 46)),
     2 * 4 * ((2944 * 4 - 2880 * 2) + 2880 * 2)),
])
def test_vllm_triton_mxfp4_hopper_layout_gpt_oss(tp, created, swizzled, fp32):
    """vLLM 0.34.0's Triton MXFP4 MoE on sm_90, by hand (4 experts, all GPUs together): the
    intermediate size per GPU is rounded to 64 at weight creation; then _swizzle_mxfp4 pads each
    expert's E8M0 scales [N, K/32] to K/32 a multiple of 4 and HopperMXScaleLayout (num_warps 8)
    N to 256, HopperMXValueLayout pads the codes [N, K/2] to 16 rows x 32 bytes, and the BF16
    biases become FP32 copies. All of it lands in kernel_padding."""
    ck, _ = _gpt_oss_like(biases=True)
    pad = next(t for t in report(ck, "h100-sxm", engine="vllm", tp=tp)["weights"]["terms"]
               if t["name"] == "kernel_padding")
    assert pad["bytes"] == created + swizzled + fp32
    assert "Hopper MX layouts" in pad["mechanism"] and "FP32" in pad["mechanism"]
    assert "mxfp4_utils.py _swizzle_mxfp4" in pad["source"] and "hopper_scale.py" in pad["source"]
    # without biases only the padding is charged
    plain, _ = _gpt_oss_like()
    assert next(t for t in report(plain, "h100-sxm", engine="vllm", tp=tp)["weights"]["terms"]
                if t["name"] == "kernel_padding")["bytes"] == created + swizzled
    # SGLang's MXFP4 MoE and vLLM off Hopper do not convert to this layout
    for gpu, engine in (("h100-sxm", "sglang"), ("a100-80gb", "vllm"), ("b200", "vllm")):
        terms = {t.name: t for t in weight_terms(ck, get_gpu(gpu), Settings(engine=engine, tp=tp))}
        assert "Hopper MX" not in terms["kernel_padding"].mechanism


def test_sglang_rope_cache_stays_fp32_on_cuda(g26):
    """SGLang's RotaryEmbedding keeps cos_sin_cache in FP32 on CUDA (base.py __init__ casts to the
    model dtype only off CUDA/HIP/XPU); Gemma 4's proportional RoPE spans the full 512-dim head.
    vLLM casts it to bf16. Two configurations: sliding (256) and full (512), 262,144 positions."""
    def rope(engine):
        return next(t for t in report(g26, "rtx3090", engine=engine)["weights"]["terms"] if t["name"] == "rope_cache")

    assert rope("sglang")["bytes"] == 262_144 * (256 + 512) * 4
    assert "FP32" in rope("sglang")["mechanism"] and "rotary_embedding/base.py" in rope("sglang")["source"]
    assert rope("vllm")["bytes"] == 262_144 * (256 + 512) * 2


def test_rtx3090_memory_is_the_sourced_driver_total():
    """The figure the engines size against: torch's 23.58 GiB total on a 2025 driver (24,146 MiB)."""
    g = get_gpu("rtx3090")
    assert g.memory_total_bytes == 24_146 * MiB
    assert f"{g.memory_total_bytes / GiB:.2f}" == "23.58" and "23.58 GiB" in g.memory_source


@pytest.mark.parametrize("engine", ["vllm", "sglang", "llamacpp"])
def test_explain_covers_the_kv_terms(g26, engine, run_cli):
    """Per layer kind: layers x KV heads per GPU x (K + V head dims) x bytes = bytes per token, and
    the tokens the engine's pool formula gives it (vLLM: one request, and the block pool)."""
    kw = {"kv_dtype": "q8_0"} if engine == "llamacpp" else {"kv_dtype": "fp8", "mem_fraction": 0.91, "swa_ratio": 0.05}
    r = report(g26, "rtx3090", engine=engine, context=8192, **kw)
    terms = {t["name"]: t for t in r["memory"]["terms"]}
    suffix = "_per_request" if engine == "vllm" else ""
    full, swa = terms[f"kv_full_layers{suffix}"], terms[f"kv_sliding_layers{suffix}"]
    b = 34 / 32 if engine == "llamacpp" else 1
    assert "5 layers x 2 KV heads/GPU x (K 512 + V 512)" in full["mechanism"] and "K=V" in full["mechanism"]
    assert "25 layers x 8 KV heads/GPU x (K 256 + V 256)" in swa["mechanism"] and "window 1024" in swa["mechanism"]
    if engine == "sglang":
        c = r["capacity"]
        assert full["bytes"] == c["full_pool_tokens"] * 10_240 and swa["bytes"] == c["swa_pool_tokens"] * 102_400
    if engine == "vllm":
        assert full["bytes"] == 8192 * 10_240 and swa["bytes"] == (1023 + 2048) * 102_400
        assert terms["kv_blocks"]["bytes"] == r["capacity"]["num_blocks"] * r["capacity"]["bytes_per_block"]
        assert "full 32 tokens" in terms["kv_blocks"]["mechanism"]
    if engine == "llamacpp":
        assert full["bytes"] == int(8192 * 5 * 2 * 1024 * b)
    out = run_cli("estimate", g26.source, "--gpu", "rtx3090", "--engine", engine, "--kv-dtype", kw["kv_dtype"],
                  "--explain").output
    assert f"kv_full_layers{suffix}" in out and "KV heads/GPU" in out
    notes = [line for line in out.splitlines() if line.startswith(("note: ", "      "))]
    assert notes and all(len(line) <= 100 for line in notes)


def test_rope_cache_once_per_distinct_rope():
    """Engines share one rotary embedding between layers whose RoPE parameters agree (vLLM's
    get_rope cache): gpt-oss (one RoPE for sliding and full layers) pays one cos/sin cache, Gemma 3
    (a local base beside rope_theta) two."""
    from types import SimpleNamespace

    from nvfp4tools.arch import parse_arch
    from nvfp4tools.estimate import _rope_bytes

    gpt_oss = {"model_type": "gpt_oss", "hidden_size": 2880, "num_hidden_layers": 4, "num_attention_heads": 64,
               "num_key_value_heads": 8, "head_dim": 64, "sliding_window": 128, "max_position_embeddings": 131072,
               "layer_types": ["sliding_attention", "full_attention"] * 2,
               "rope_parameters": {"rope_type": "yarn", "rope_theta": 150000, "factor": 32.0}}
    assert _rope_bytes(SimpleNamespace(config=gpt_oss), parse_arch(gpt_oss)) == 131072 * 64 * 2
    gemma3 = {"model_type": "gemma3_text", "hidden_size": 3840, "num_hidden_layers": 12, "num_attention_heads": 16,
              "num_key_value_heads": 8, "sliding_window": 1024, "rope_theta": 1000000.0,
              "rope_local_base_freq": 10000.0}
    assert _rope_bytes(SimpleNamespace(config=gemma3), parse_arch(gemma3)) == 2 * 131072 * 256 * 2
