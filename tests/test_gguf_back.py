"""GGUFs llama.cpp wrote, back to safetensors: every supported family's BF16 GGUF (llama.cpp's own
convert_hf_to_gguf.py) converts to a checkpoint equal to the original transformers checkpoint tensor
for tensor (names, dtypes, bytes) that transformers loads and runs to the same logits, with its
tokenizer rebuilt; llama.cpp's NVFP4 GGUFs of ModelOpt exports come back with the export's codes,
block scales and scales byte for byte."""

from __future__ import annotations

import json
import os

import pytest

from nvfp4tools import formats
from nvfp4tools.io import PartReader

pytestmark = pytest.mark.interop

FAMILIES = ("llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen3_moe", "deepseek_v3", "gpt_oss", "phi3")
# what a GGUF cannot give back (formats/gguf_restore.py): Llama 3's RoPE scaling parameters are not in
# it (only the rope_freqs tensor they produced), so transformers runs the restored model without them
LOGITS_DIFFER = {"llama": "Llama 3 RoPE scaling parameters are not recorded in a GGUF"}


def _bytes(ck, t, role="data"):
    p = t.part(role)
    if p is None:
        return None
    with PartReader(ck.root) as r:
        return p.stored_dtype, tuple(p.stored_shape), r.read(p)


@pytest.mark.parametrize("family", FAMILIES)
def test_llama_cpp_bf16_gguf_back_to_the_original(family, family_oracle, run_cli, tmp_path):
    import families

    out = str(tmp_path / "back")
    r = run_cli("convert", family_oracle(family, "bf16.gguf"), out, "--to", "safetensors", "--format", "json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["lossless"]
    orig, back = formats.read(family_oracle(family, "bf16")), formats.read(out)
    assert sorted(back.tensors) == sorted(orig.tensors)
    diff = [n for n, t in orig.tensors.items() if _bytes(orig, t) != _bytes(back, back.tensors[n])]
    assert diff == [], diff[:5]
    assert run_cli("inspect", out).exit_code == 0
    toks = families.test_tokens()
    err = families.rel_error(families.hf_logits(out, toks), families.hf_logits(family_oracle(family, "bf16"), toks))
    if family in LOGITS_DIFFER:
        assert err > 0.01, "the limitation no longer shows: update LOGITS_DIFFER and the docs"
        return
    assert err < 1e-5, err
    from nvfp4tools.formats.gguf_restore import FAMILIES as RESTORED

    if any(f.model_type == family and f.no_tokenizer for f in RESTORED.values()):
        assert not os.path.exists(os.path.join(out, "tokenizer.json"))
        return
    from transformers import AutoTokenizer

    text = "hello world, abc zz 123 the quick fox"
    # the vocabulary and merges (special-token insertion follows the GGUF's add_bos/add_eos keys, when written)
    want = AutoTokenizer.from_pretrained(family_oracle(family, "bf16"))(text, add_special_tokens=False)["input_ids"]
    assert AutoTokenizer.from_pretrained(out)(text, add_special_tokens=False)["input_ids"] == want


@pytest.mark.parametrize("family", ["llama", "qwen3_moe", "phi3", "qwen2"])
def test_llama_cpp_nvfp4_gguf_back_to_the_modelopt_export(family, family_oracle, run_cli, tmp_path):
    out = str(tmp_path / "back")
    r = run_cli("convert", family_oracle(family, "nvfp4.gguf"), out, "--to", "modelopt")
    assert r.exit_code == 0, r.stderr
    orig, back = formats.read(family_oracle(family, "modelopt_nvfp4")), formats.read(out)
    q = [n for n, t in orig.tensors.items() if t.scheme.name == "nvfp4"]
    assert q and set(q) <= set(back.tensors)
    for n in q:
        for role in ("data", "block_scale", "global_scale", "input_scale"):
            assert _bytes(orig, orig.tensors[n], role) == _bytes(back, back.tensors[n], role), (n, role)
    assert run_cli("verify", out, "--sample", "8").exit_code == 0


def test_unsupported_gguf_architecture_is_refused_by_name(tmp_path, run_cli):
    from nvfp4tools.synth_gguf import write_gemma4_gguf

    g = str(tmp_path / "x.gguf")
    write_gemma4_gguf(g)
    r = run_cli("convert", g, str(tmp_path / "out"), "--to", "safetensors")
    assert r.exit_code == 3 and "cannot be converted back" in r.stderr and not os.path.exists(tmp_path / "out")


def _ct_decompressed(out: str):
    """Every quantized module of compressed-tensors checkpoint OUT, decompressed by compressed-tensors'
    own compressors (scales widened to float32: its fp16 arithmetic would round int8 x fp16 products)."""
    import torch
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import QuantizationConfig
    from safetensors.torch import load_file

    with open(os.path.join(out, "config.json")) as fh:
        cfg = QuantizationConfig.model_validate(json.load(fh)["quantization_config"])
    sd = {}
    for f in os.listdir(out):
        if f.endswith(".safetensors"):
            sd.update(load_file(os.path.join(out, f)))
    got = {}
    for grp in cfg.config_groups.values():
        comp = BaseCompressor.get_value_from_registry(grp.format)
        mods = grp.targets if not any(t[:1].isupper() for t in grp.targets) else sorted(
            {k.rsplit(".", 1)[0] for k in sd if k.endswith(".weight_scale")})
        for mod in mods:
            local = {k[len(mod) + 1:]: (v.to(torch.float32) if k.endswith("weight_scale") else v)
                     for k, v in sd.items() if k.startswith(mod + ".")}
            got[mod + ".weight"] = comp.decompress(local, grp)["weight"].to(torch.float32).numpy()
    return got


@pytest.mark.parametrize("family", ["qwen3", "llama", "qwen3_moe"])
@pytest.mark.parametrize("kind", ["q4_0.gguf", "q8_0.gguf"])
def test_llama_quantize_gguf_to_compressed_tensors(family, kind, family_oracle, run_cli, tmp_path):
    """llama-quantize's mixed-type GGUFs (Q4_0 with Q8_0 output, or Q8_0) -> compressed-tensors:
    Q4_0 as pack-quantized int4, Q8_0 as int-quantized int8 (group 32, fp16 scales), one config group
    per scheme; compressed-tensors' own decompression equals gguf-py's dequantization element by
    element (after the un-permutation and expert split the conversion undoes)."""
    import numpy as np
    from gguf import GGUFReader
    from gguf.quants import dequantize

    from nvfp4tools.convert.canon import llama_permutation, unpermute
    from nvfp4tools.formats.gguf_restore import restore

    src = family_oracle(family, kind)
    out = str(tmp_path / "ct")
    r = run_cli("convert", src, out, "--to", "compressed-tensors", "--format", "json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["lossless"]
    assert run_cli("inspect", out).exit_code == 0
    assert run_cli("verify", out, "--sample", "8").exit_code == 0
    got = _ct_decompressed(out)
    gg = {t.name: t for t in GGUFReader(src).tensors}
    checked = 0
    for tg in restore(formats.read(src)).targets:
        if tg.name not in got:
            continue
        t = gg[tg.sources[0]]
        ref = dequantize(np.asarray(t.data), t.tensor_type).astype(np.float32)
        if tg.expert is not None:
            ref = ref[tg.expert]
        if tg.unpermute_heads:
            ref = ref[unpermute(llama_permutation(ref.shape[0], tg.unpermute_heads))]
        assert np.array_equal(got[tg.name], ref), tg.name
        checked += 1
    assert checked == len(got) > 0


def test_k_quants_are_refused_unless_lossy(family_oracle, run_cli, tmp_path):
    src = family_oracle("qwen3", "q4_k_m.gguf")
    out = str(tmp_path / "ct")
    r = run_cli("convert", src, out, "--to", "compressed-tensors")
    assert r.exit_code == 3 and "q4_k" in r.stderr.lower() and "--allow-lossy" in r.stderr and not os.path.exists(out)
    r = run_cli("convert", src, out, "--to", "compressed-tensors", "--allow-lossy", "--format", "json")
    assert r.exit_code == 0, r.stderr
    rep = json.loads(r.stdout)
    assert not rep["lossless"] and rep["lossy"] and all(x["to"] == "bf16" for x in rep["lossy"])
    assert run_cli("inspect", out).exit_code == 0
