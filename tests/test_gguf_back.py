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
