"""inspect: outputs in every format, exit codes, and each finding on a checkpoint built to show it."""

from __future__ import annotations

import json
import os

import pytest

from tests.helpers import copy_ckpt, edit_json, poke, poke_f32

L0 = "model.language_model.layers.0"


def js(r):
    assert r.stdout, r.stderr
    return json.loads(r.stdout)


def codes(report):
    return {f["code"]: f for f in report["findings"]}


@pytest.mark.parametrize("fmt", ["modelopt", "compressed-tensors", "compressed-tensors-w4a16", "bf16"])
def test_synth_formats_read_back(synth_dir, run_cli, fmt):
    path = synth_dir(preset="gemma4-tiny", fmt=fmt, recipe="all-linear")
    r = run_cli("inspect", path, "--format", "json")
    assert r.exit_code == 0, r.stderr
    rep = js(r)
    assert rep["schema"] == "nvfp4tools/inspect/v1"
    want_format = {"modelopt": "modelopt", "bf16": "safetensors"}.get(fmt, "compressed-tensors")
    assert rep["format"] == want_format
    roles = {x["role"]: x for x in rep["roles"]}
    if fmt == "bf16":
        assert rep["summary"]["n_parameters_quantized"] == 0
    else:
        for role in ("attention", "mlp", "experts"):
            assert roles[role]["share_quantized"] == 1.0, role
        for role in ("router", "embedding", "vision", "projector"):
            assert roles[role]["share_quantized"] == 0.0, role
    # logical parameter counts never depend on the layout
    assert rep["summary"]["n_parameters"] == 3_626_678
    r2 = run_cli("inspect", path)
    assert r2.exit_code == 0 and "role" in r2.stdout and "layers" in r2.stdout


def test_exact_bytes_nvfp4(synth_dir, run_cli):
    """NVFP4 bytes = n/2 + n/16 + 4 (+4 input scale) per tensor: no float approximations."""
    rep = js(run_cli("inspect", synth_dir(fmt="modelopt", recipe="all-linear"), "--format", "json", "--tensors"))
    for t in rep["tensors"]:
        if t["scheme"] == "nvfp4":
            n = 1
            for d in t["shape"]:
                n *= d
            assert t["nbytes"] == n // 2 + n // 16 + 4 + 4, t["name"]


def test_w4a16_scheme_and_shape(synth_dir, run_cli):
    rep = js(run_cli("inspect", synth_dir(fmt="compressed-tensors-w4a16", recipe="all-linear", group_size=32),
                     "--format", "json", "--tensors"))
    t = next(t for t in rep["tensors"] if t["name"] == f"{L0}.mlp.down_proj.weight")
    assert t["scheme"] == "int4-g32-sym" and t["shape"] == [128, 256]
    assert {p["role"] for p in t["parts"]} == {"data", "block_scale", "shape"}


def test_layers_collapse_and_expand(synth_dir, run_cli):
    p = synth_dir(fmt="modelopt", recipe="all-linear")
    rep = js(run_cli("inspect", p, "--format", "json"))
    assert len(rep["layers"]) == 1 and (rep["layers"][0]["first"], rep["layers"][0]["last"]) == (0, 5)
    assert rep["layers"][0]["roles"]["experts"] == "nvfp4 x8"
    rep2 = js(run_cli("inspect", p, "--format", "json", "--layers"))
    assert [r["first"] for r in rep2["layers"]] == list(range(6))


def test_experts_only_recipe(synth_dir, run_cli):
    rep = js(run_cli("inspect", synth_dir(fmt="modelopt", recipe="experts-only"), "--format", "json"))
    roles = {x["role"]: x for x in rep["roles"]}
    assert roles["experts"]["share_quantized"] == 1.0
    assert roles["attention"]["share_quantized"] == 0.0 and roles["mlp"]["share_quantized"] == 0.0
    assert "attention_4bit" not in codes(rep)


def test_attention_4bit_is_info(synth_dir, run_cli):
    r = run_cli("inspect", synth_dir(fmt="modelopt", recipe="all-linear"), "--format", "json")
    assert r.exit_code == 0
    assert codes(js(r))["attention_4bit"]["severity"] == "info"


def test_zero_global_scale(synth_dir, run_cli, tmp_path):
    p = copy_ckpt(synth_dir(fmt="modelopt", recipe="all-linear"), tmp_path / "c")
    poke_f32(p, f"{L0}.mlp.down_proj.weight_scale_2", 0.0)
    r = run_cli("inspect", p, "--format", "json")
    assert r.exit_code == 1
    f = codes(js(r))["bad_global_scale"]
    assert f["tensor"] == f"{L0}.mlp.down_proj.weight" and "0" in f["message"]


def test_nan_input_scale_ct_divisor(synth_dir, run_cli, tmp_path):
    p = copy_ckpt(synth_dir(fmt="compressed-tensors", recipe="all-linear"), tmp_path / "c")
    poke_f32(p, f"{L0}.mlp.down_proj.input_global_scale", float("nan"))
    r = run_cli("inspect", p, "--format", "json")
    assert r.exit_code == 1
    assert "nan" in codes(js(r))["bad_input_scale"]["message"]


def test_fused_global_scale_mismatch(synth_dir, run_cli, tmp_path):
    p = copy_ckpt(synth_dir(fmt="modelopt", recipe="all-linear"), tmp_path / "c")
    poke_f32(p, f"{L0}.self_attn.k_proj.weight_scale_2", 0.5)
    r = run_cli("inspect", p, "--format", "json")
    assert r.exit_code == 1
    f = codes(js(r))["fused_global_scale_mismatch"]
    assert "k_proj=0.5" in f["message"] and "q_proj" in f["message"]


def test_gate_up_mismatch_per_expert(synth_dir, run_cli, tmp_path):
    p = copy_ckpt(synth_dir(fmt="modelopt", recipe="all-linear"), tmp_path / "c")
    poke_f32(p, f"{L0}.experts.3.up_proj.weight_scale_2", 0.25)
    f = codes(js(run_cli("inspect", p, "--format", "json")))["fused_global_scale_mismatch"]
    assert "experts.3" in f["message"] and "up_proj=0.25" in f["message"]


def test_missing_scale(synth_dir, run_cli, tmp_path):
    """Rename a scale away: the weight is still NVFP4 (config + U8) but has no global scale."""
    p = copy_ckpt(synth_dir(fmt="modelopt", recipe="all-linear"), tmp_path / "c")
    path = os.path.join(p, "model.safetensors")
    raw = open(path, "rb").read()
    key = f"{L0}.mlp.down_proj.weight_scale_2".encode()
    raw = raw.replace(b'"' + key + b'"', b'"' + key[:-14] + b'zzzzzzzzzzzzzz"', 1)
    open(path, "wb").write(raw)
    rep = js(run_cli("inspect", p, "--format", "json"))
    c = codes(rep)
    assert c["missing_scale"]["tensor"] == f"{L0}.mlp.down_proj.weight"
    assert "global scale" in c["missing_scale"]["message"]
    # convert refuses it before writing (the output would miss the scale too, or carry the orphan)
    out = tmp_path / "o"
    r = run_cli("convert", p, str(out), "--to", "compressed-tensors")
    assert r.exit_code == 3 and "global scale" in r.stderr and not out.exists(), r.stderr


def test_experts_left_bf16_fused(synth_dir, run_cli, tmp_path):
    """The ModelOpt #1173 failure: fused 3-D experts stayed BF16 while the config says NVFP4."""
    from nvfp4tools.synth import synthesize

    p = str(tmp_path / "c")
    synthesize(p, fmt="modelopt", recipe="mlp-experts", experts="fused")
    # make the fused experts BF16 (as the broken export did): rewrite through the bf16 writer
    synthesize(str(tmp_path / "b"), fmt="bf16", experts="fused")
    import shutil
    shutil.copy(os.path.join(tmp_path, "b", "model.safetensors"), os.path.join(p, "model.safetensors"))
    r = run_cli("inspect", p, "--format", "json")
    assert r.exit_code == 1
    f = codes(js(r))["not_quantized_as_configured"]
    assert "experts" in f["message"] and "#1173" in f["message"]


def test_exclude_pattern_matching_nothing(synth_dir, run_cli, tmp_path):
    p = copy_ckpt(synth_dir(fmt="modelopt", recipe="all-linear"), tmp_path / "c")
    edit_json(os.path.join(p, "hf_quant_config.json"),
              lambda d: d["quantization"]["exclude_modules"].append("model.language_model.layers.9.router*"))
    f = codes(js(run_cli("inspect", p, "--format", "json")))["pattern_matches_nothing"]
    assert "layers.9.router*" in f["message"] and f["severity"] == "warning"


def test_nvfp4_group_size_other_than_16(synth_dir, run_cli, tmp_path):
    """A ModelOpt NVFP4 config saying group_size 32 over 16-element blocks does not load (engines
    size the scale tensors from it): an error finding naming the key."""
    p = copy_ckpt(synth_dir(fmt="modelopt", recipe="all-linear"), tmp_path / "c")
    edit_json(os.path.join(p, "hf_quant_config.json"), lambda d: d["quantization"].update(group_size=32))
    r = run_cli("inspect", p, "--format", "json")
    f = codes(js(r))["group_size_mismatch"]
    assert r.exit_code == 1 and "group_size 32" in f["message"] and f["severity"] == "error"


def test_quantized_but_excluded(synth_dir, run_cli, tmp_path):
    p = copy_ckpt(synth_dir(fmt="modelopt", recipe="all-linear"), tmp_path / "c")
    edit_json(os.path.join(p, "hf_quant_config.json"),
              lambda d: d["quantization"]["exclude_modules"].append("*.mlp.*"))
    r = run_cli("inspect", p, "--format", "json")
    assert r.exit_code == 1 and "quantized_but_excluded" in codes(js(r))


def test_deep_finds_nan_block_scale(synth_dir, run_cli, tmp_path):
    p = copy_ckpt(synth_dir(fmt="modelopt", recipe="all-linear"), tmp_path / "c")
    poke(p, f"{L0}.mlp.up_proj.weight_scale", b"\x7f", at=5)
    poke(p, f"{L0}.mlp.gate_proj.weight_scale", b"\xb8", at=0)  # negative 1.0
    assert run_cli("inspect", p).exit_code == 0  # block scales are only read with --deep
    r = run_cli("inspect", p, "--deep", "--format", "json")
    assert r.exit_code == 1
    c = codes(js(r))
    assert c["block_scale_nan"]["tensor"] == f"{L0}.mlp.up_proj.weight"
    assert c["block_scale_negative"]["tensor"] == f"{L0}.mlp.gate_proj.weight"


def test_sharded_header_only_full_size(tmp_path, run_cli):
    from nvfp4tools.synth import synthesize

    p = str(tmp_path / "g")
    synthesize(p, preset="gemma4-26b-a4b", fmt="modelopt", recipe="all-linear", header_only=True, shards=4)
    assert os.path.isfile(os.path.join(p, "model.safetensors.index.json"))
    rep = js(run_cli("inspect", p, "--format", "json"))
    # text 25.233 B + vision 569.6 M + projector 3.24 M (gemma4-memory.md 1.3)
    assert abs(rep["summary"]["n_parameters"] - 25.806e9) < 0.01e9
    assert len(rep["files"]) == 4 and rep["summary"]["n_tensors"] > 11_000
    # all-linear NVFP4, vision BF16: 16.42 GB = 15.29 GiB (gemma4-memory.md 1.3, which ignores the
    # 8 bytes of fp32 scalars per quantized linear)
    assert abs(rep["summary"]["tensor_bytes"] / 16.42e9 - 1) < 0.002
