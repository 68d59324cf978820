"""verify's verdicts: an SQNR floor against the original, layers matched across naming dialects,
degenerate layers, and every backend's state listed."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from tests.helpers import zero_part

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _verify(run_cli, *args):
    r = run_cli("verify", *args, "--format", "json")
    assert r.exit_code in (0, 1), r.stderr
    return r.exit_code, json.loads(r.stdout)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """An NVFP4 checkpoint, its BF16 source (same seed), and an unrelated BF16 model (other seed)."""
    from nvfp4tools.synth import synthesize

    base = tmp_path_factory.mktemp("pair")
    out = {k: str(base / k) for k in ("q", "orig", "other")}
    synthesize(out["q"], fmt="modelopt", recipe="all-linear", seed=3)
    synthesize(out["orig"], fmt="bf16", seed=3)
    synthesize(out["other"], fmt="bf16", seed=9)
    return out


def test_right_original_passes_with_nvfp4_sqnr(pair, run_cli):
    code, rep = _verify(run_cli, pair["q"], "--against", pair["orig"])
    ag = rep["summary"]["against"]
    assert code == 0 and rep["verdict"] == "pass"
    assert ag["n_unmatched"] == 0 and ag["n_matched"] == rep["summary"]["n_layers"] and not ag["not_source"]
    assert 19.0 < ag["median_weight_sqnr_db"] < 22.0  # NVFP4 on Gaussian weights: 20.4 dB (bench/sqnr_floors.py)
    assert all(x["against"]["min_weight_sqnr_db"] == 15.0 for x in rep["layers"])


def test_unrelated_original_fails_and_says_so(pair, run_cli):
    """Today's bug: an unrelated original gave SQNR -3 dB, output error 1.41 and PASS."""
    code, rep = _verify(run_cli, pair["q"], "--against", pair["other"])
    ag = rep["summary"]["against"]
    assert code == 1 and rep["verdict"] == "fail"
    assert ag["not_source"] and "not this checkpoint's source" in ag["message"]
    assert -3.5 < ag["median_weight_sqnr_db"] < -2.5
    r = run_cli("verify", pair["q"], "--against", pair["other"])
    assert r.exit_code == 1 and "not this checkpoint's source" in r.stdout and "verdict: FAIL" in r.stdout


def test_floor_and_ceiling_options(pair, run_cli):
    code, rep = _verify(run_cli, pair["q"], "--against", pair["orig"], "--min-sqnr", "experts=25")
    bad = [x for x in rep["layers"] if x["verdict"] == "fail"]
    assert code == 1 and bad and {x["role"] for x in bad} == {"experts"}
    assert "below the floor 25 dB" in bad[0]["problems"][0]
    code, rep = _verify(run_cli, pair["q"], "--against", pair["orig"], "--min-sqnr", "10",
                        "--max-output-error", "attention=0.01")
    assert code == 1 and {x["role"] for x in rep["layers"] if x["verdict"] == "fail"} == {"attention"}
    for args, needle in ((("--min-sqnr", "bogus=3"), "unknown role 'bogus'"), (("--min-sqnr", "x"), "not a number")):
        r = run_cli("verify", pair["q"], "--against", pair["orig"], *args)
        assert r.exit_code == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run_cli("verify", pair["q"], "--min-sqnr", "10")
    assert r.exit_code == 2 and "--against" in r.stderr


def _rewrite(src: str, dst: str, fn) -> None:
    """Copy a BF16 checkpoint with its tensors renamed/refused by FN(name, array) -> {name: array}."""
    from safetensors.numpy import load_file, save_file

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors", "*.index.json"))
    import ml_dtypes  # noqa: F401  (bf16 numpy dtype for safetensors.numpy)

    out: dict[str, np.ndarray] = {}
    for n in sorted(os.listdir(src)):
        if n.endswith(".safetensors"):
            for k, v in load_file(os.path.join(src, n)).items():
                out.update(fn(k, v))
    save_file(out, os.path.join(dst, "model.safetensors"))


def test_original_with_fused_experts_matches_per_expert_layers(pair, run_cli, tmp_path):
    """Original stores each layer's experts fused ([E, 2I, H] gate then up, [E, H, I] down, as
    transformers' Gemma 4 / Qwen3-MoE do); the quantized checkpoint has them one by one."""
    import re

    groups: dict[tuple, dict[int, np.ndarray]] = {}

    def split(name, arr):
        m = re.match(r"(.*\.experts)\.(\d+)\.(gate|up|down)_proj\.weight$", name)
        if not m:
            return {name: arr}
        groups.setdefault((m.group(1), m.group(3)), {})[int(m.group(2))] = arr
        return {}

    fused = str(tmp_path / "fused")
    _rewrite(pair["orig"], fused, split)
    from safetensors.numpy import load_file, save_file

    st = os.path.join(fused, "model.safetensors")
    tensors = load_file(st)
    for base in {k[0] for k in groups}:
        n = len(groups[(base, "gate")])
        tensors[f"{base}.gate_up_proj"] = np.stack([np.concatenate([groups[(base, "gate")][e], groups[(base, "up")][e]])
                                                    for e in range(n)])
        tensors[f"{base}.down_proj"] = np.stack([groups[(base, "down")][e] for e in range(n)])
    save_file(tensors, st)
    code, rep = _verify(run_cli, pair["q"], "--against", fused)
    ag = rep["summary"]["against"]
    assert code == 0 and ag["n_unmatched"] == 0 and ag["median_weight_sqnr_db"] > 19


def test_unmatched_layers_are_listed_and_counted(pair, run_cli, tmp_path):
    partial = str(tmp_path / "partial")
    _rewrite(pair["orig"], partial, lambda k, v: {} if ".layers.1." in k and "proj" in k else {k: v})
    code, rep = _verify(run_cli, pair["q"], "--against", partial)
    ag = rep["summary"]["against"]
    missing = [x for x in rep["layers"] if ".layers.1." in x["name"]]
    assert ag["n_unmatched"] == len(missing) > 0 and {u["name"] for u in ag["unmatched"]} == {x["name"] for x in missing}
    assert all("in the original" in u["reason"] for u in ag["unmatched"])
    assert code == 0  # listed, not failed: the matched layers are right
    r = run_cli("verify", pair["q"], "--against", partial)
    assert f"{ag['n_unmatched']} unmatched" in r.stdout
    nothing = str(tmp_path / "nothing")
    _rewrite(pair["orig"], nothing, lambda k, v: {} if "proj" in k else {k: v})
    code, rep = _verify(run_cli, pair["q"], "--against", nothing)
    assert code == 1 and rep["summary"]["against"]["n_matched"] == 0 and rep["summary"]["against"]["not_source"]


def test_degenerate_layers_fail_inspect_deep_and_verify(synth_dir, run_cli, tmp_path):
    from nvfp4tools import formats

    p = str(tmp_path / "deg")
    shutil.copytree(synth_dir(fmt="modelopt", recipe="all-linear"), p)
    q = [t for t in formats.read(p).tensors.values() if t.scheme.quantized]
    zero_part(p, q[0].part("data"))
    zero_part(p, q[3].part("block_scale"))
    r = run_cli("inspect", p, "--deep", "--format", "json")
    f = [x for x in json.loads(r.stdout)["findings"] if x["code"] == "degenerate_layer"]
    assert r.exit_code == 1 and f and f[0]["severity"] == "error"
    assert q[0].name in f[0]["message"] and q[3].name in f[0]["message"]
    assert run_cli("inspect", p).exit_code == 0  # headers only: not read without --deep
    code, rep = _verify(run_cli, p)
    bad = {x["name"]: x["problems"] for x in rep["layers"] if x["verdict"] == "fail"}
    assert code == 1 and set(bad) == {q[0].name, q[3].name}
    assert all(any(s.startswith("degenerate") for s in v) for v in bad.values())


def test_backend_all_lists_every_backend_with_its_state(synth_dir, run_cli):
    from nvfp4tools.kernels_ref.dispatch import names

    p = synth_dir(fmt="modelopt", recipe="all-linear")
    code, rep = _verify(run_cli, p, "--backend", "all", "--sample", "4")
    states = {b["name"]: b for b in rep["backends"]}
    assert set(states) == set(names())
    assert states["ref"]["state"] == "ran" and states["ref"]["n_layers"] == 4
    for b in states.values():
        assert b["state"] in ("ran", "unavailable", "not_applicable")
        assert (b["reason"] is None) == (b["state"] == "ran")
    table = run_cli("verify", p, "--backend", "all", "--sample", "4").stdout
    for b in states.values():
        if b["state"] == "unavailable":
            assert f"backend {b['name']}: unavailable" in table


def test_require_backend(synth_dir, run_cli):
    from nvfp4tools.kernels_ref.dispatch import status

    p = synth_dir(fmt="modelopt", recipe="all-linear")
    r = run_cli("verify", p, "--require-backend", "ref", "--sample", "2")
    assert r.exit_code == 0
    r = run_cli("verify", p, "--require-backend", "nope")
    assert r.exit_code == 2 and "unknown backend 'nope'" in r.stderr
    missing = [s for s in status() if not s["available"]]
    if not missing:
        pytest.skip("every backend is available on this machine")
    r = run_cli("verify", p, "--require-backend", missing[0]["name"])
    assert r.exit_code == 4 and missing[0]["name"] in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_verify_json_matches_schema(pair, run_cli):
    jsonschema = pytest.importorskip("jsonschema")
    with open(os.path.join(ROOT, "docs", "schema", "verify.json")) as fh:
        schema = json.load(fh)
    for other in ("orig", "other"):
        jsonschema.validate(_verify(run_cli, pair["q"], "--against", pair[other], "--backend", "all")[1], schema)


@pytest.mark.interop
@pytest.mark.parametrize("family", ["llama", "mixtral", "qwen3_moe", "deepseek_v3", "phi3", "gpt_oss"])
def test_upstream_export_against_its_original(family, family_oracle, run_cli):
    """ModelOpt's NVFP4 export against the transformers model it came from: every layer matched
    (transformers 5 stores MoE experts fused, ModelOpt writes them one by one; gpt-oss's are
    [E, in, out] on both sides, interleaved), SQNR above the floor."""
    code, rep = _verify(run_cli, family_oracle(family, "modelopt_nvfp4"), "--against", family_oracle(family, "bf16"))
    ag = rep["summary"]["against"]
    assert ag["n_unmatched"] == 0, ag["unmatched"][:3]
    assert code == 0 and rep["verdict"] == "pass" and ag["median_weight_sqnr_db"] > 15


@pytest.mark.interop
@pytest.mark.parametrize("q_kind,o_kind", [("nvfp4.gguf", "bf16"), ("modelopt_nvfp4", "bf16.gguf"),
                                           ("nvfp4.gguf", "bf16.gguf")])
def test_gguf_and_safetensors_against_each_other(q_kind, o_kind, family_oracle, run_cli):
    """llama.cpp's GGUF against the transformers original and the reverse: layers match across the
    naming dialects (blk.N.attn_q / model.layers.N.self_attn.q_proj), and the Q/K rows llama.cpp's
    converter put into ggml's RoPE pair order are compared in the same order (else attention SQNR
    reads about -3 dB and the checkpoint is called someone else's)."""
    code, rep = _verify(run_cli, family_oracle("llama", q_kind), "--against", family_oracle("llama", o_kind))
    ag = rep["summary"]["against"]
    assert ag["n_unmatched"] == 0 and ag["n_matched"] > 0, ag["unmatched"][:3]
    att = next(r for r in rep["summary"]["by_role"] if r["role"] == "attention")
    assert code == 0 and rep["verdict"] == "pass" and att["min_weight_sqnr_db"] > 15, att


def test_a_four_bit_original_is_not_an_original(pair, run_cli):
    """--against the checkpoint itself (or any 4-bit one): every layer unmatched with the reason,
    verdict FAIL, never an 'identical weights' PASS."""
    code, rep = _verify(run_cli, pair["q"], "--against", pair["q"])
    ag = rep["summary"]["against"]
    assert code == 1 and rep["verdict"] == "fail" and ag["n_matched"] == 0
    assert "(4-bit): --against takes the unquantized" in ag["unmatched"][0]["reason"]
