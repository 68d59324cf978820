"""verify: clean checkpoints pass, broken ones fail naming the layer, backends are explicit;
interop against compressed-tensors' and ModelOpt's own dequantization."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from tests.helpers import copy_ckpt, poke, poke_f32

L0 = "model.language_model.layers.0"


@pytest.mark.parametrize("fmt", ["modelopt", "compressed-tensors", "compressed-tensors-w4a16"])
def test_clean_checkpoints_pass(run_cli, synth_dir, fmt):
    r = run_cli("verify", synth_dir(fmt=fmt, recipe="all-linear"), "--format", "json")
    assert r.exit_code == 0, r.stdout[-2000:] + r.stderr
    rep = json.loads(r.stdout)
    assert rep["schema"] == "nvfp4tools/verify/v2" and rep["verdict"] == "pass"
    assert rep["summary"]["n_layers"] == 185
    row = rep["layers"][0]
    assert row["path_rel_err"] is not None and row["path_rel_err"] <= 1e-6
    assert row["backends"][0]["backend"] == "ref" and row["backends"][0]["rel_err"] < 1e-5
    if fmt != "compressed-tensors-w4a16":
        assert 0 < row["w4a4_rel_err"] < 0.5  # activation quantization adds error (information only)


def test_sample_is_seeded(run_cli, synth_dir):
    p = synth_dir(fmt="modelopt", recipe="all-linear")
    a = json.loads(run_cli("verify", p, "--sample", "5", "--format", "json").stdout)
    b = json.loads(run_cli("verify", p, "--sample", "5", "--format", "json").stdout)
    assert [x["name"] for x in a["layers"]] == [x["name"] for x in b["layers"]] and len(a["layers"]) == 5


def test_nan_block_scale_fails_naming_layer(run_cli, synth_dir, tmp_path):
    p = copy_ckpt(synth_dir(fmt="modelopt", recipe="all-linear"), tmp_path / "c")
    poke(p, f"{L0}.mlp.up_proj.weight_scale", b"\x7f", at=3)
    r = run_cli("verify", p, "--format", "json")
    assert r.exit_code == 1
    bad = [x for x in json.loads(r.stdout)["layers"] if x["verdict"] == "fail"]
    assert [x["name"] for x in bad] == [f"{L0}.mlp.up_proj.weight"]
    assert "NaN" in bad[0]["problems"][0]
    assert bad[0]["backends"][0]["rel_err"] is None  # NaN output never passes
    t = run_cli("verify", p)
    assert "FAIL" in t.stdout and f"{L0}.mlp.up_proj.weight" in t.stdout


def test_zero_global_scale_fails(run_cli, synth_dir, tmp_path):
    p = copy_ckpt(synth_dir(fmt="modelopt", recipe="all-linear"), tmp_path / "c")
    poke_f32(p, f"{L0}.self_attn.o_proj.weight_scale_2", 0.0)
    r = run_cli("verify", p, "--format", "json")
    assert r.exit_code == 1
    bad = [x for x in json.loads(r.stdout)["layers"] if x["verdict"] == "fail"]
    assert bad[0]["name"] == f"{L0}.self_attn.o_proj.weight" and "global scale 0.0" in bad[0]["problems"][0]


def test_truncated_scale_is_unreadable(run_cli, synth_dir, tmp_path):
    p = copy_ckpt(synth_dir(fmt="modelopt", recipe="all-linear"), tmp_path / "c")
    f = os.path.join(p, "model.safetensors")
    os.truncate(f, os.path.getsize(f) - 100)
    r = run_cli("verify", p)
    assert r.exit_code == 3 and "past the end" in r.stderr


def test_unknown_and_unavailable_backends(run_cli, synth_dir):
    p = synth_dir(fmt="modelopt", recipe="all-linear")
    r = run_cli("verify", p, "--backend", "nope")
    assert r.exit_code == 2 and "unknown backend 'nope'" in r.stderr and "known: ref" in r.stderr


def test_verify_against_original_synth(run_cli, tmp_path):
    """Same seed, same random weights: the NVFP4 checkpoint against its own BF16 original."""
    from nvfp4tools.synth import synthesize

    q, o = str(tmp_path / "q"), str(tmp_path / "o")
    synthesize(q, fmt="modelopt", recipe="experts-only", seed=4)
    synthesize(o, fmt="bf16", seed=4)
    r = run_cli("verify", q, "--against", o, "--format", "json")
    rep = json.loads(r.stdout)
    assert rep["verdict"] == "pass"
    roles = {x["role"]: x for x in rep["summary"]["by_role"]}
    assert "experts" in roles


@pytest.mark.interop
def test_verify_against_bf16_oracle(oracles, run_cli):
    """The tiny ModelOpt NVFP4 export against the BF16 model it was made from: NVFP4-level error."""
    r = run_cli("verify", oracles["modelopt_nvfp4"], "--against", oracles["bf16"], "--format", "json")
    assert r.exit_code == 0, r.stderr
    rep = json.loads(r.stdout)
    for role in rep["summary"]["by_role"]:
        assert 17.0 < role["mean_weight_sqnr_db"] < 24.0, role   # NVFP4 on Gaussian weights: ~20 dB
        assert 0.05 < role["mean_output_rel_err"] < 0.15, role


@pytest.mark.interop
def test_dequantize_matches_compressed_tensors_decompressor(oracles):
    """Our dequantization of the CT checkpoint == compressed-tensors' own NVFP4 decompressor."""
    import torch
    from compressed_tensors.compressors.nvfp4.base import NVFP4PackedCompressor
    from compressed_tensors.quantization import QuantizationScheme
    from safetensors import safe_open

    from nvfp4tools import formats
    from nvfp4tools.tensors import dequantize

    ck = formats.read(oracles["ct_nvfp4"])
    with open(os.path.join(oracles["ct_nvfp4"], "config.json")) as fh:
        group = next(iter(json.load(fh)["quantization_config"]["config_groups"].values()))
    scheme = QuantizationScheme.model_validate(group)
    n = 0
    with safe_open(os.path.join(oracles["ct_nvfp4"], "model.safetensors"), framework="pt") as f:
        for t in ck.tensors.values():
            if t.scheme.name != "nvfp4":
                continue
            mod = t.name[: -len(".weight")]
            sd = {k: f.get_tensor(f"{mod}.{k}") for k in ("weight_packed", "weight_scale", "weight_global_scale")}
            theirs_t = NVFP4PackedCompressor.decompress(sd, scheme)["weight"]
            theirs = theirs_t.to(torch.float32).numpy()
            # compressed-tensors decompresses in bf16 (scale cast to bf16, divided by the global, times
            # the value: two bf16 roundings); ours is the exact fp32 product. They agree to 2 bf16 ulps.
            ours = dequantize(ck, t)
            assert theirs_t.dtype == torch.bfloat16
            assert np.allclose(ours, theirs, rtol=2.0 ** -7, atol=0), mod
            n += 1
    assert n == 185


@pytest.mark.interop
def test_dequantize_matches_modelopt(oracles):
    import torch
    from modelopt.torch.quantization.qtensor.nvfp4_tensor import NVFP4QTensor
    from safetensors import safe_open

    from nvfp4tools import formats
    from nvfp4tools.tensors import dequantize

    ck = formats.read(oracles["modelopt_nvfp4"])
    with safe_open(os.path.join(oracles["modelopt_nvfp4"], "model.safetensors"), framework="pt") as f:
        for name in [n for n, t in ck.tensors.items() if t.scheme.name == "nvfp4"][:40]:
            mod = name[: -len(".weight")]
            w, s, s2 = (f.get_tensor(f"{mod}.{k}") for k in ("weight", "weight_scale", "weight_scale_2"))
            q = NVFP4QTensor(torch.Size((w.shape[0], w.shape[1] * 2)), torch.float32, w)
            theirs = q.dequantize(dtype=torch.float32, scale=s, double_scale=s2, block_sizes={-1: 16}).numpy()
            assert np.array_equal(dequantize(ck, ck.tensors[name]), theirs), name


@pytest.mark.interop
def test_int4_dequantize_matches_compressed_tensors(synth_dir):
    torch = pytest.importorskip("torch")
    pytest.importorskip("compressed_tensors")
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationScheme
    from safetensors import safe_open

    from nvfp4tools import formats
    from nvfp4tools.tensors import dequantize

    p = synth_dir(fmt="compressed-tensors-w4a16", recipe="all-linear")
    ck = formats.read(p)
    with open(os.path.join(p, "config.json")) as fh:
        scheme = QuantizationScheme.model_validate(
            next(iter(json.load(fh)["quantization_config"]["config_groups"].values())))
    with safe_open(os.path.join(p, "model.safetensors"), framework="pt") as f:
        for name in [n for n, t in ck.tensors.items() if t.scheme.quantized][:30]:
            mod = name[: -len(".weight")]
            sd = {k: f.get_tensor(f"{mod}.{k}") for k in ("weight_packed", "weight_scale", "weight_shape")}
            theirs_t = PackedQuantizationCompressor.decompress(sd, scheme)["weight"]
            # q * scale is exact in fp32; compressed-tensors rounds it once to the scale dtype (bf16)
            ours = torch.from_numpy(dequantize(ck, ck.tensors[name])).to(theirs_t.dtype)
            assert torch.equal(ours, theirs_t), name
