"""Real upstream checkpoints of the common decoder families (tests/oracles/families.py).

For each family: transformers and nvidia-modelopt write it, llama.cpp's own converter turns the
BF16 model into a GGUF, `nvfp4tools inspect` reads what they wrote, and llama.cpp running that GGUF
agrees with transformers on the logits: llama.cpp's conversion is the reference for ours."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest

pytestmark = pytest.mark.interop

import families  # noqa: E402  (tests/oracles, put on sys.path by conftest)

# (family, kind) -> the exact error `nvfp4tools inspect` gives today; xfail until nvfp4tools reads it.
INSPECT_XFAIL: dict[tuple[str, str], str] = {}

# Relative error ||llama.cpp - transformers|| / ||transformers|| of the logits on 32 tokens.
# llama.cpp's CPU matmul rounds activations to BF16 for BF16 weights (and keeps K/V in F16), so it
# is not exact: measured 0.6-1.3% for most families, 2.0-3.1% for mixtral and gpt_oss over five
# token draws. transformers' own BF16 run is further from its FP32 run (1.3-4.6%, 4.0% mixtral,
# 4.6% gpt_oss). Real conversion bugs are far above: ignored llama3 RoPE scaling 66%, a wrong Q/K
# row permutation 110%, softmax instead of sigmoid DeepSeek gating 22%.
LOGITS_RTOL = 0.025
LOGITS_RTOL_FAMILY = {"mixtral": 0.05, "gpt_oss": 0.05}


def _params(kind: str):
    out = []
    for fam in families.FAMILIES:
        marks = []
        if (fam, kind) in INSPECT_XFAIL:
            marks.append(pytest.mark.xfail(reason=INSPECT_XFAIL[fam, kind]))
        out.append(pytest.param(fam, marks=marks, id=fam))
    return out


@pytest.mark.parametrize("family", families.FAMILIES)
def test_upstream_builds(family_oracle, family):
    bf16 = family_oracle(family, "bf16")
    with open(os.path.join(bf16, "config.json")) as fh:
        assert json.load(fh)["architectures"] == [families.SPECS[family][1]]
    assert os.path.isfile(os.path.join(bf16, "tokenizer.json"))
    nv = family_oracle(family, "modelopt_nvfp4")
    with open(os.path.join(nv, "hf_quant_config.json")) as fh:
        q = json.load(fh)["quantization"]
    assert q["quant_algo"] == "NVFP4" and q["group_size"] == 16
    with open(os.path.join(nv, "config.json")) as fh:
        assert json.load(fh)["quantization_config"]["quant_method"] == "modelopt"


def _inspect(run_cli, path):
    res = run_cli("inspect", path, "--format", "json")
    assert res.exit_code == 0, (res.exit_code, res.output[-2000:], getattr(res, "stderr", "")[-2000:])
    return json.loads(res.output)


@pytest.mark.parametrize("family", _params("modelopt_nvfp4"))
def test_inspect_modelopt_nvfp4(family_oracle, run_cli, family):
    rep = _inspect(run_cli, family_oracle(family, "modelopt_nvfp4"))
    assert rep["format"] == "modelopt" and rep["algorithm"] == "NVFP4"


@pytest.mark.parametrize("family", _params("bf16.gguf"))
def test_inspect_llama_cpp_bf16_gguf(family_oracle, run_cli, family):
    rep = _inspect(run_cli, family_oracle(family, "bf16.gguf"))
    assert rep["format"] == "gguf"


@pytest.mark.parametrize("family", families.FAMILIES)
def test_llama_cpp_logits_match_transformers(family_oracle, family):
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python not installed (make setup-test builds it)")
    tokens = families.test_tokens(32)
    ref = families.hf_logits(family_oracle(family, "bf16"), tokens)
    got = families.llama_logits(family_oracle(family, "bf16.gguf"), tokens)
    assert got.shape == ref.shape == (len(tokens), families.VOCAB)
    err = families.rel_error(got, ref)
    tol = LOGITS_RTOL_FAMILY.get(family, LOGITS_RTOL)
    assert err < tol, f"{family}: llama.cpp vs transformers logits, relative error {err:.4f} (limit {tol})"


NVFP4_GGUF = [f for f in families.FAMILIES if (f, "nvfp4.gguf") not in families.UPSTREAM_LIMITS]


@pytest.mark.parametrize("family", NVFP4_GGUF)
def test_inspect_llama_cpp_nvfp4_gguf(family_oracle, run_cli, family):
    """llama.cpp's converter on ModelOpt's NVFP4 export (where it can: families.UPSTREAM_LIMITS)."""
    rep = _inspect(run_cli, family_oracle(family, "nvfp4.gguf"))
    assert rep["format"] == "gguf" and rep["algorithm"] == "MOSTLY_NVFP4"


@pytest.mark.parametrize("family", sorted({f for f, k in families.UPSTREAM_LIMITS}))
def test_upstream_limits_are_named(family_oracle, family):
    with pytest.raises(families.UpstreamLimitation, match="convert_hf_to_gguf"):
        family_oracle(family, "nvfp4.gguf")
