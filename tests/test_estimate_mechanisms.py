"""estimate mechanisms read from the engines' code: SGLang's default mem_fraction_static, a stored
lm_head that vLLM and SGLang skip when the embeddings are tied, vLLM's MXFP4 MoE padding."""

from __future__ import annotations

import dataclasses

import pytest

from nvfp4tools.estimate import Settings, estimate, weight_terms
from nvfp4tools.estimate_engines import sglang_default_mem_fraction, sglang_prefill_graph_sizes
from nvfp4tools.gpus import get_gpu

GiB = 2**30
MiB = 2**20


@pytest.fixture(scope="module")
def g26(tmp_path_factory):
    from nvfp4tools.formats import read
    from nvfp4tools.synth import synthesize

    p = str(tmp_path_factory.mktemp("all-linear"))
    synthesize(p, preset="gemma4-26b-a4b", fmt="modelopt", recipe="all-linear", header_only=True)
    return read(p)


def test_prefill_graph_sizes_as_sglang_generates_them():
    assert len(sglang_prefill_graph_sizes(4096)) == 8 + 14 + 8 + 8 + 12
    assert len(sglang_prefill_graph_sizes(8192)) == 50 + 8
    assert sglang_prefill_graph_sizes(16)[-1] == 16


def test_sglang_default_mem_fraction_hand_computed(g26):
    """memory_hook.handle_gpu_memory_settings by hand. RTX 3090 (23.70 GiB = 24,269 MiB, the
    24-35 GiB tier: chunk 4096, decode graphs to bs 48, 50 prefill graph sizes):
    512 + 1.5 x 4096 + 1/8 x 1024 + 2 x 48 + 8 x 50 = 7,280 MiB -> round(17,989 / 24,269, 3);
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
    r = estimate(g26, get_gpu("h100-sxm"), Settings(engine="sglang", text_only=True), suggest=False).report
    assert r["settings"]["mem_fraction_default"] is True
    assert r["settings"]["mem_fraction"] == sglang_default_mem_fraction(
        g26, g26.arch, get_gpu("h100-sxm"), Settings(engine="sglang", text_only=True))[0]
    assert any(t["name"] == "default_reserved_mib" for t in r["memory"]["terms"])
    assert "--mem-fraction-static" in r["launch"]["argv"]
    given = estimate(g26, get_gpu("h100-sxm"), Settings(engine="sglang", mem_fraction=0.9), suggest=False).report
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
    plain = estimate(g26, get_gpu("h100-sxm"), s, suggest=False).report
    stored = estimate(ck, get_gpu("h100-sxm"), s, suggest=False).report
    assert stored["weights"]["bytes_total"] == plain["weights"]["bytes_total"]
    t = {x["name"]: x for x in stored["weights"]["terms"]}
    assert t["lm_head"]["bytes"] == 0 and f"{nbytes:,} B" in t["lm_head"]["mechanism"]
    # untied, the stored head is loaded: the weights grow by exactly its bytes
    untied = dataclasses.replace(ck, arch=dataclasses.replace(ck.arch, tie_word_embeddings=False))
    u = estimate(untied, get_gpu("h100-sxm"), s, suggest=False).report
    assert u["weights"]["bytes_total"] == plain["weights"]["bytes_total"] + nbytes


def _gpt_oss_like(n_experts: int = 4):
    """One gpt-oss-120b-shaped MoE layer (hidden 2880, expert intermediate 2880) with MXFP4
    experts: n/2 bytes of E2M1 codes + n/32 E8M0 scales per matrix."""
    from nvfp4tools.arch import parse_arch
    from nvfp4tools.model import Checkpoint, TensorInfo, TensorPart
    from nvfp4tools.schemes import MXFP4

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
    return Checkpoint("mxfp4", "gpt-oss-like", "", tensors, (), 0, arch=arch), tensors


@pytest.mark.parametrize("gpu,factor", [("rtx4090", 2944 * 3072 / 2880**2),     # Marlin: I to 128, H to 256
                                        ("a100-80gb", 2944 * 3072 / 2880**2),   # Marlin
                                        ("b200", 2944 * 3072 / 2880**2),        # TRT-LLM: the same rounding
                                        ("h100-sxm", 1.0)])                     # Triton: 2880 % 64 == 0
def test_vllm_mxfp4_moe_padding_gpt_oss(gpu, factor):
    """vLLM's MXFP4 MoE rounding for gpt-oss (fused_moe/oracle/mxfp4.py), as the compat model's
    kernel path gives it, lands in the weights as kernel_padding: +9.04% of the expert bytes off
    Hopper, none on Hopper's Triton path."""
    ck, tensors = _gpt_oss_like()
    experts = sum(t.nbytes for t in tensors.values())
    terms = {t.name: t for t in weight_terms(ck, get_gpu(gpu), Settings(engine="vllm"))}
    assert terms["kernel_padding"].bytes == pytest.approx(experts * (factor - 1), rel=1e-6)
    if factor > 1:
        assert "MXFP4 MoE" in terms["kernel_padding"].mechanism
    assert "kernel_padding" not in {t.name for t in weight_terms(ck, get_gpu(gpu), Settings(engine="llamacpp"))}
