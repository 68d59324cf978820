"""gpt-oss's own MXFP4 checkpoints (quant_method "mxfp4", experts as _blocks/_scales): read with
the right scheme and shapes, decoded exactly as transformers decodes them, and sized per engine
kernel (vLLM's MXFP4 MoE rounds hidden and intermediate sizes up)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from nvfp4tools import compat, formats
from nvfp4tools.compat.rules import padding_bytes
from nvfp4tools.tensors import dequantize


def write_gpt_oss_mxfp4(path: str, *, hidden: int = 64, inter: int = 64, experts: int = 4, layers: int = 2,
                        header_only: bool = False, seed: int = 0) -> str:
    """A gpt-oss checkpoint in the layout openai/gpt-oss-20b ships (tensor names, dtypes, shapes)."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    v, heads, kv, hd = 512, 4, 1, 16

    def arr(shape, dtype, fill=None):
        if header_only:   # shape and dtype only (broadcast views: no memory)
            return np.broadcast_to(np.zeros((), dtype), shape)
        if fill is not None:
            return np.full(shape, fill, dtype)
        if dtype == np.uint8:
            return rng.integers(0, 256, shape, dtype=np.uint8)
        return rng.standard_normal(shape).astype(dtype)

    t = {"model.embed_tokens.weight": arr((v, hidden), np.float16), "model.norm.weight": arr((hidden,), np.float16, 1),
         "lm_head.weight": arr((v, hidden), np.float16)}
    for i in range(layers):
        p = f"model.layers.{i}"
        for n, s in (("q_proj", (heads * hd, hidden)), ("k_proj", (kv * hd, hidden)), ("v_proj", (kv * hd, hidden)),
                     ("o_proj", (hidden, heads * hd))):
            t[f"{p}.self_attn.{n}.weight"] = arr(s, np.float16)
            t[f"{p}.self_attn.{n}.bias"] = arr((s[0],), np.float16, 0)
        t[f"{p}.self_attn.sinks"] = arr((heads,), np.float16, 0)
        t[f"{p}.mlp.router.weight"] = arr((experts, hidden), np.float16)
        t[f"{p}.mlp.router.bias"] = arr((experts,), np.float16, 0)
        for name, out_f, in_f in (("gate_up_proj", 2 * inter, hidden), ("down_proj", hidden, inter)):
            t[f"{p}.mlp.experts.{name}_blocks"] = arr((experts, out_f, in_f // 32, 16), np.uint8)
            # E8M0 exponents near 127 (scales 2^-8 .. 2^1)
            t[f"{p}.mlp.experts.{name}_scales"] = (arr((experts, out_f, in_f // 32), np.uint8) if header_only
                                                    else rng.integers(119, 129, (experts, out_f, in_f // 32),
                                                                      dtype=np.uint8))
            t[f"{p}.mlp.experts.{name}_bias"] = arr((experts, out_f), np.float16, 0)
        t[f"{p}.input_layernorm.weight"] = arr((hidden,), np.float16, 1)
        t[f"{p}.post_attention_layernorm.weight"] = arr((hidden,), np.float16, 1)
    os.makedirs(path, exist_ok=True)
    if header_only:   # a sparse file: headers only, no disk cost (as synth --header-only)
        from nvfp4tools.formats._st_writer import write_safetensors

        st = {np.dtype(np.float16): "F16", np.dtype(np.uint8): "U8"}
        write_safetensors(os.path.join(path, "model.safetensors"), [(k, st[a.dtype], a.shape) for k, a in t.items()],
                          lambda name: None)
    else:
        save_file(t, os.path.join(path, "model.safetensors"))
    cfg = {"architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss", "hidden_size": hidden,
           "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": heads,
           "num_key_value_heads": kv, "head_dim": hd, "num_local_experts": experts, "num_experts_per_tok": 2,
           "vocab_size": v, "sliding_window": 128, "max_position_embeddings": 4096, "tie_word_embeddings": False,
           "layer_types": ["sliding_attention", "full_attention"] * (layers // 2) + ["sliding_attention"] * (layers % 2),
           "quantization_config": {"quant_method": "mxfp4", "modules_to_not_convert": [
               "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}}
    with open(os.path.join(path, "config.json"), "w") as fh:
        json.dump(cfg, fh)
    return path


@pytest.fixture(scope="module")
def goss(tmp_path_factory):
    return write_gpt_oss_mxfp4(str(tmp_path_factory.mktemp("goss") / "ck"))


def test_read_as_mxfp4_experts(goss):
    ck = formats.read(goss)
    assert ck.format == "mxfp4" and ck.quant_method == "mxfp4"
    gu = ck.tensors["model.layers.0.mlp.experts.gate_up_proj"]
    dn = ck.tensors["model.layers.0.mlp.experts.down_proj"]
    assert gu.scheme.name == "mxfp4" and gu.role == "experts" and gu.n_experts_fused == 4
    assert gu.shape == (4, 128, 64) and dn.shape == (4, 64, 64)    # [E, out, in]
    assert {p.role for p in gu.parts} == {"data", "block_scale"}
    others = [t for t in ck.tensors.values() if t.scheme.quantized and t.role != "experts"]
    assert others == []                                               # only the experts are MXFP4
    assert ck.tensors["model.layers.0.mlp.experts.gate_up_proj_bias"].scheme.name == "fp16"


def test_decodes_as_transformers_does(goss):
    """transformers' own decoder (integrations/mxfp4.convert_moe_packed_tensors, which returns the
    [E, in, out] parameter) is the oracle, bit for bit in float32."""
    torch = pytest.importorskip("torch")
    mx = pytest.importorskip("transformers.integrations.mxfp4")
    from safetensors.numpy import load_file

    ck = formats.read(goss)
    raw = load_file(os.path.join(goss, "model.safetensors"))
    for name in ("gate_up_proj", "down_proj"):
        key = f"model.layers.1.mlp.experts.{name}"
        ref = mx.convert_moe_packed_tensors(torch.from_numpy(raw[key + "_blocks"]), torch.from_numpy(raw[key + "_scales"]),
                                            dtype=torch.float32)
        ours = dequantize(ck, ck.tensors[key])
        assert np.array_equal(ours, ref.transpose(1, 2).numpy()), name


def test_verify_and_deep_nan_scale(goss, tmp_path, run_cli):
    r = run_cli("verify", goss, "--format", "json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["summary"]["n_layers"] == 2 * 2 * 4      # per expert, both projections
    from tests.helpers import copy_ckpt, poke

    bad = copy_ckpt(goss, tmp_path / "bad")
    poke(bad, "model.layers.0.mlp.experts.down_proj_scales", b"\xff")
    r = run_cli("inspect", bad, "--deep", "--format", "json")
    assert r.exit_code == 1
    assert any(f["code"] == "block_scale_nonfinite" and "E8M0" in f["message"] for f in json.loads(r.stdout)["findings"])


def test_vllm_mxfp4_moe_paths_and_padding(tmp_path):
    """gpt-oss-20b's expert dimensions (hidden 2880, intermediate 2880, 32 experts): vLLM's
    Marlin and TRT-LLM MXFP4 MoE round hidden to 256 and intermediate to 128 (expert weights
    x 3072*2944 / 2880^2 = 1.0904), Triton (sm_90) intermediate to 64 (2880 already is), then
    its own layout."""
    path = write_gpt_oss_mxfp4(str(tmp_path / "g20"), hidden=2880, inter=2880, experts=32, layers=1, header_only=True)
    ck = formats.read(path)
    ids = {a.ccs: [u.path.id for u in a.paths] for a in compat.assess_all(ck, ("vllm",))}
    assert ids[((8, 0), (8, 6), (8, 9))] == ["vllm.mxfp4.moe.marlin"]
    assert ids[((9, 0),)] == ["vllm.mxfp4.moe.triton"]
    assert ids[((10, 0),)] == ["vllm.mxfp4.moe.trtllm"]
    experts = sum(t.nbytes for t in ck.tensors.values() if t.scheme.name == "mxfp4")
    bpe = experts / (3 * 32 * 2880 * 2880)                    # 4.25 bits: codes + one E8M0 per 32
    assert bpe == 4.25 / 8
    marlin, _ = padding_bytes(ck, "vllm", (8, 9))
    assert marlin == int(32 * (3 * 3072 * 2944 - 3 * 2880 * 2880) * bpe)
    assert round((experts + marlin) / experts, 4) == 1.0904
    # Triton (sm_90): no rounding at 2880, but triton_kernels' Hopper layout pads the E8M0 scales
    # to 256 rows x 4 groups (gate/up 5760 -> 5888 rows, down 2880 -> 3072; 90 -> 92 groups), the
    # codes not at all (5760 and 2880 rows, 1440 bytes, are whole 16 x 32 tiles), and the fp16
    # expert biases become fp32
    scales = (5888 * 92 - 5760 * 90) + (3072 * 92 - 2880 * 90)
    biases = (5760 + 2880) * (4 - 2)
    assert padding_bytes(ck, "vllm", (9, 0))[0] == 32 * (scales + biases) == 2_048_000
    assert padding_bytes(ck, "vllm", (10, 0))[0] == marlin
    # below the minimum capability vLLM's Mxfp4Config refuses
    a = compat.assess(ck, compat.Target("vllm", (7, 5)))
    assert not a.loads and "8.0" in a.findings[0].message


@pytest.mark.parametrize("to, out, needle", [
    ("compressed-tensors", "ct", "no exact compressed-tensors form"),
    ("safetensors", "plain", "--allow-lossy"),
    ("gguf", "x.gguf", "llama.cpp's convert_hf_to_gguf.py"),
])
def test_conversions_refused_in_one_line(goss, tmp_path, run_cli, to, out, needle):
    r = run_cli("convert", goss, str(tmp_path / out), "--to", to)
    assert r.exit_code == 3 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not os.path.exists(tmp_path / out)
