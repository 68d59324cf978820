"""convert on checkpoints the real upstream tools wrote for each decoder family: every output is
read back by nvfp4tools (inspect and verify), every GGUF written from a BF16 model equals llama.cpp's
own conversion tensor for tensor (names, types and bytes: the Q/K permutation, rope_freqs and
expert stacking pinned), and every GGUF nvfp4tools writes loads and runs in llama.cpp."""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest

from nvfp4tools.formats.gguf_arch import ARCHES, REFUSED

FAMILIES = ("llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen3_moe", "deepseek_v3", "gpt_oss", "phi3")
GGUF_OK = tuple(f for f in FAMILIES if f in ARCHES)

pytestmark = pytest.mark.interop


def _gguf_tensors(path: str) -> dict[str, tuple[int, bytes]]:
    from gguf import GGUFReader

    return {t.name: (int(t.tensor_type), bytes(np.asarray(t.data).view(np.uint8).reshape(-1)))
            for t in GGUFReader(path).tensors}


def _readable(run_cli, path: str, quantized: bool = True) -> None:
    r = run_cli("inspect", path, "--format", "json")
    assert r.exit_code == 0, r.stderr + r.stdout[-2000:]
    if not quantized:   # verify checks quantized layers; a BF16 GGUF has none
        return
    r = run_cli("verify", path, "--sample", "8", "--format", "json")
    assert r.exit_code == 0, r.stderr + r.stdout[-2000:]


def test_bf16_source_to_a_quantized_target_is_refused(synth_dir, tmp_path, run_cli):
    """A checkpoint of unquantized weights never comes out labelled as quantized."""
    src = synth_dir(fmt="bf16")
    for to in ("modelopt", "compressed-tensors"):
        out = tmp_path / to
        r = run_cli("convert", src, str(out), "--to", to)
        assert r.exit_code == 3 and "no quantized tensor" in r.stderr and "--allow-lossy --quantize" in r.stderr
        assert not out.exists() and os.listdir(tmp_path) == [] or not out.exists()


def test_gguf_destination_must_be_named_gguf(synth_dir, tmp_path, run_cli):
    src = synth_dir(fmt="modelopt", recipe="all-linear")
    r = run_cli("convert", src, str(tmp_path / "out"), "--to", "gguf")
    assert r.exit_code == 2 and "does not end in .gguf" in r.stderr
    assert os.listdir(tmp_path) == []
    g = tmp_path / "x.gguf"
    g.write_bytes(b"keep")
    r = run_cli("convert", src, str(g), "--to", "gguf")
    assert r.exit_code == 2 and "--force" in r.stderr and g.read_bytes() == b"keep"


def test_stale_temporary_output_is_removed(synth_dir, tmp_path, run_cli):
    src = synth_dir(fmt="modelopt", recipe="all-linear")
    stale = tmp_path / ".out.nvfp4tools-tmp-999999999"
    stale.mkdir()
    assert run_cli("convert", src, str(tmp_path / "out"), "--to", "compressed-tensors").exit_code == 0
    assert sorted(os.listdir(tmp_path)) == ["out"]


# open: ModelOpt exports gpt-oss experts as [E, in/2, out] with scales along dim 1, which the
# ModelOpt reader does not accept yet
# exports whose layout nvfp4tools reads (inspect, verify) but does not convert: ModelOpt keeps
# gpt-oss's fused experts as transformers stores them, [E, in, out] (codes [E, in/2, out], scales
# [E, in/16, out]); no target format names a 4-bit tensor in that orientation
READ_ONLY = {"gpt_oss": "stored transposed"}
# families whose NVFP4 export needs --allow-lossy for GGUF, and the tensors that makes inexact
# (written dequantized to BF16). llama.cpp's graphs for these architectures apply no NVFP4 global
# to their FFN / expert matmuls (gguf_arch.GRAPH_SCALED: llama.cpp's own conversion of the export
# loads and computes NaN); DeepSeek's MLA also needs kv_b_proj split and transposed (attn_k_b /
# attn_v_b: no NVFP4 form; llama.cpp's own converter writes it unsplit as attn_kv_b, which its
# loader rejects), and its q_a / q_b / kv_a_mqa projections get no global either.
_FFN = ("ffn_gate", "ffn_up", "ffn_down")
# relative logits error of llama.cpp running an NVFP4 GGUF against transformers on the dequantized
# weights: llama.cpp quantizes activations for its NVFP4 dot products (measured 0.017-0.054 on these
# tiny models, whose 0.2 initializer range makes activations large)
NVFP4_RUN_TOLERANCE = 0.1
LOSSY_GGUF = {
    "qwen2": _FFN,
    "phi3": _FFN,
    "deepseek_v3": _FFN + ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps", "ffn_gate_shexp", "ffn_up_shexp",
                           "ffn_down_shexp", "attn_k_b", "attn_v_b", "attn_kv_b", "attn_q_a", "attn_q_b",
                           "attn_kv_a_mqa"),
}


def _dequantized_hf(src: str, like: str, out: str) -> str:
    """A transformers checkpoint (config and tokenizer of LIKE) holding SRC's weights dequantized
    (BF16): what the NVFP4 model computes, for transformers to run."""
    import shutil

    import torch
    from safetensors.torch import save_file

    from nvfp4tools import formats
    from nvfp4tools.tensors import dequantize

    shutil.copytree(like, out, ignore=shutil.ignore_patterns("*.safetensors", "*.index.json"))
    ck = formats.read(src)
    save_file({n: torch.from_numpy(np.asarray(dequantize(ck, t), np.float32).copy()).to(torch.bfloat16)
               for n, t in ck.tensors.items()}, os.path.join(out, "model.safetensors"))
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_nvfp4_export_to_ct_and_back(family_oracle, tmp_path, run_cli, family):
    src = family_oracle(family, "modelopt_nvfp4")
    ct, back = str(tmp_path / "ct"), str(tmp_path / "mo")
    if family in READ_ONLY:
        _readable(run_cli, src)
        for to, out in (("compressed-tensors", ct), ("modelopt", back), ("gguf", str(tmp_path / "x.gguf"))):
            r = run_cli("convert", src, out, "--to", to)
            assert r.exit_code == 3 and READ_ONLY[family] in r.stderr and not os.path.exists(out), r.stderr
        return
    r = run_cli("convert", src, ct, "--to", "compressed-tensors", "--format", "json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["lossless"]
    _readable(run_cli, ct)
    r = run_cli("convert", ct, back, "--to", "modelopt")
    assert r.exit_code == 0, r.stderr
    from nvfp4tools import formats
    a, b = formats.read(src), formats.read(back)
    assert sorted(a.tensors) == sorted(b.tensors)

    def raw(ck, part):
        with open(os.path.join(ck.root, part.file), "rb") as fh:
            fh.seek(part.offset)
            return part.stored_dtype, part.stored_shape, fh.read(part.nbytes)

    for name, t in a.tensors.items():
        got = {p.key: raw(b, p) for p in b.tensors[name].parts}
        assert {p.key: raw(a, p) for p in t.parts} == got, name


@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_gguf_equals_llama_cpp(family_oracle, tmp_path, run_cli, family):
    """nvfp4tools' GGUF of the BF16 model holds exactly llama.cpp's tensors (or is refused by name)."""
    src = family_oracle(family, "bf16")
    out = str(tmp_path / "ours.gguf")
    r = run_cli("convert", src, out, "--to", "gguf", "--format", "json")
    if family not in ARCHES:
        assert r.exit_code == 3 and family in r.stderr and "not supported" in r.stderr, r.stderr
        assert family in REFUSED and not os.path.exists(out)
        return
    assert r.exit_code == 0, r.stderr
    ref = _gguf_tensors(family_oracle(family, "bf16.gguf"))
    ours = _gguf_tensors(out)
    assert sorted(ours) == sorted(ref)
    diff = [n for n in ref if ours[n] != ref[n]]
    assert diff == [], diff[:5]


@pytest.mark.parametrize("family", GGUF_OK)
def test_nvfp4_gguf_equals_llama_cpp(family_oracle, tmp_path, run_cli, family):
    """nvfp4tools' GGUF of the ModelOpt NVFP4 export holds exactly the tensors llama.cpp's own
    converter writes from it (codes, block scales, .scale/.input_scale sidecars, order-free), where
    llama.cpp's converter can convert the export at all."""
    import families

    try:
        ref = _gguf_tensors(family_oracle(family, "nvfp4.gguf"))
    except families.UpstreamLimitation as e:
        pytest.skip(str(e))
    out = str(tmp_path / "ours.gguf")
    src = family_oracle(family, "modelopt_nvfp4")
    inexact = LOSSY_GGUF.get(family, ())
    if inexact:
        r = run_cli("convert", src, out, "--to", "gguf")
        assert r.exit_code == 3 and "--allow-lossy" in r.stderr and not os.path.exists(out), r.stderr
    r = run_cli("convert", src, out, "--to", "gguf", *(("--allow-lossy",) if inexact else ()))
    assert r.exit_code == 0, r.stderr
    ours = _gguf_tensors(out)

    def exact(names):
        return sorted(n for n in names if not any(f".{x}." in n for x in inexact))

    lossy = {n for n in ours if n not in exact(ours)}
    assert all(ours[n][0] == 30 for n in lossy if n.endswith(".weight")), "inexact tensors are written BF16"

    assert exact(ours) == exact(ref)
    diff = [n for n in exact(ref) if ours[n] != ref[n]]
    assert diff == [], diff[:5]


@pytest.mark.parametrize("family", GGUF_OK)
def test_gguf_outputs_run_in_llama_cpp(family_oracle, tmp_path, run_cli, family):
    """Both GGUFs nvfp4tools writes (from BF16 and from the NVFP4 export) load in llama.cpp and
    compute what transformers computes on the same weights: the BF16 model, and the NVFP4 export
    dequantized (NVFP4 kernels and activation rounding in llama.cpp aside)."""
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed (make setup-test builds it)")
    import families

    toks = families.test_tokens()
    outs = {}
    for kind in ("bf16", "modelopt_nvfp4"):
        if kind != "bf16" and family in READ_ONLY:
            break   # refused (test_nvfp4_export_to_ct_and_back)
        out = str(tmp_path / f"{kind}.gguf")
        lossy = ("--allow-lossy",) if kind != "bf16" and family in LOSSY_GGUF else ()
        r = run_cli("convert", family_oracle(family, kind), out, "--to", "gguf", *lossy)
        assert r.exit_code == 0, r.stderr
        _readable(run_cli, out, quantized=kind != "bf16")
        outs[kind] = families.llama_logits(out, toks)
    ref = families.hf_logits(family_oracle(family, "bf16"), toks)
    assert families.rel_error(outs["bf16"], ref) < 0.05   # llama.cpp's own BF16 GGUF gives the same
    if family in READ_ONLY:
        return
    deq = _dequantized_hf(family_oracle(family, "modelopt_nvfp4"), family_oracle(family, "bf16"),
                          str(tmp_path / "dequantized"))
    err = families.rel_error(outs["modelopt_nvfp4"], families.hf_logits(deq, toks))
    print(f"{family}: NVFP4 GGUF in llama.cpp vs transformers on the dequantized weights: rel err {err:.4f}")
    assert np.all(np.isfinite(outs["modelopt_nvfp4"])) and err < NVFP4_RUN_TOLERANCE, err


@pytest.mark.parametrize("family, rope", [
    ("qwen2", dict(rope_type="yarn", rope_theta=1000000.0, factor=4.0, original_max_position_embeddings=64,
                   beta_fast=32.0, beta_slow=1.0)),
    ("llama", dict(rope_type="linear", rope_theta=10000.0, factor=2.0)),
    ("qwen3", dict(rope_type="dynamic", rope_theta=10000.0, factor=2.0)),
])
def test_rope_scaling_keys_equal_llama_cpp(tmp_path, run_cli, family, rope):
    """RoPE scaling metadata as llama.cpp's converter writes it (types and values of every rope.* key)."""
    import families
    import torch
    import transformers
    from gguf import GGUFReader

    if not os.path.isfile(os.path.join(families.LLAMA_CPP, "convert_hf_to_gguf.py")):
        pytest.skip("llama.cpp converter not found")
    cfg = families.tiny_config(family)
    cfg.rope_parameters = rope
    torch.manual_seed(0)
    model = getattr(transformers, families.SPECS[family][1])(cfg).to(torch.bfloat16)
    src = str(tmp_path / "hf")
    model.save_pretrained(src)
    families.add_tokenizer(family, [src])
    ref, ours = str(tmp_path / "ref.gguf"), str(tmp_path / "ours.gguf")
    families.llama_cpp_convert(src, ref, "bf16", families.GGUF_PRE[family])
    r = run_cli("convert", src, ours, "--to", "gguf")
    assert r.exit_code == 0, r.stderr

    def rope_keys(path):
        out = {}
        for k, f in GGUFReader(path).fields.items():
            if ".rope." in k:
                v = f.contents()
                out[k] = (int(f.types[0]), round(v, 6) if isinstance(v, float) else v)
        return out

    assert rope_keys(ours) == rope_keys(ref)
    assert (rope["rope_type"] in ("yarn", "linear")) == any("scaling.type" in k for k in rope_keys(ref))


def test_unmirrored_rope_type_is_refused_before_writing(tmp_path, run_cli):
    import families
    import torch
    import transformers

    cfg = families.tiny_config("phi3")
    cfg.rope_parameters = dict(rope_type="longrope", rope_theta=10000.0, long_factor=[1.0] * 16,
                               short_factor=[1.0] * 16, original_max_position_embeddings=64,
                               partial_rotary_factor=1.0)
    model = getattr(transformers, families.SPECS["phi3"][1])(cfg).to(torch.bfloat16)
    src = str(tmp_path / "hf")
    model.save_pretrained(src)
    out = tmp_path / "x.gguf"
    for extra in (("--dry-run",), ()):
        r = run_cli("convert", src, str(out), "--to", "gguf", *extra)
        assert r.exit_code == 3 and "LongRoPE" in r.stderr and not out.exists(), r.stderr


# nvfp4tools splits these tensors on the way to GGUF and does not join them back (gpt-oss's
# gate_up and interleaved down experts, DeepSeek's kv_b_proj): the way back refuses, by name
SPLIT_ON_THE_WAY = {"gpt_oss": "blk.0.ffn_down_exps", "deepseek_v3": "blk.0.attn_k_b"}


def _raw_parts(path: str) -> dict[str, dict[str, tuple[str, tuple, bytes]]]:
    from nvfp4tools import formats

    ck = formats.read(path)
    out = {}
    for name, t in ck.tensors.items():
        parts = {}
        for p in t.parts:
            with open(os.path.join(ck.root, p.file), "rb") as fh:
                fh.seek(p.offset)
                parts[p.key] = (p.stored_dtype, tuple(p.stored_shape), fh.read(p.nbytes))
        out[name] = parts
    return out


@pytest.mark.parametrize("family", GGUF_OK)
@pytest.mark.parametrize("kind", ["bf16", "modelopt_nvfp4"])
def test_own_gguf_converts_back_to_the_same_bytes(family_oracle, tmp_path, run_cli, family, kind):
    """A GGUF nvfp4tools wrote, converted back (--to safetensors / --to modelopt), gives the source's
    tensors byte for byte: the Q/K rows it put into ggml's RoPE pair order (Llama, Mistral, Mixtral)
    come back in the checkpoint's order, or the way back is refused before writing, naming a tensor
    it split and cannot join (no tensor silently left out)."""
    if kind == "modelopt_nvfp4" and (family in LOSSY_GGUF or family in READ_ONLY):
        pytest.skip(f"{family}'s NVFP4 export has no exact GGUF form (tested above)")
    src = family_oracle(family, kind)
    g, back = str(tmp_path / "x.gguf"), str(tmp_path / "back")
    r = run_cli("convert", src, g, "--to", "gguf")
    assert r.exit_code == 0, r.stderr
    r = run_cli("convert", g, back, "--to", "safetensors" if kind == "bf16" else "modelopt")
    if family in SPLIT_ON_THE_WAY:
        assert r.exit_code == 3 and SPLIT_ON_THE_WAY[family] in r.stderr and not os.path.exists(back), r.stderr
        return
    assert r.exit_code == 0, r.stderr
    a, b = _raw_parts(src), _raw_parts(back)
    # written back: every tensor the GGUF holds (a tied lm_head and MTP layers are not written to it)
    assert b and set(b) <= set(a), sorted(set(b) - set(a))[:5]
    assert any(".q_proj." in n or ".qkv_proj." in n for n in b)
    diff = [n for n in b if a[n] != b[n]]
    assert diff == [], diff[:5]
