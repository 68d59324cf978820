"""convert: lossless paths byte-identical, compared with the real tools' own output; atomic output;
bad input refused with the fix."""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest

from nvfp4tools import formats
from tests.helpers import copy_ckpt, poke_f32, tensor_bytes

L0 = "model.language_model.layers.0"


def _non_roundtrip_f32() -> float:
    """A float32 s with fp32(1/fp32(1/s)) != s (the 1-ulp reciprocal trap)."""
    rng = np.random.default_rng(0)
    for v in rng.uniform(1e-5, 1e-3, 100000).astype(np.float32):
        if np.float32(1) / (np.float32(1) / v) != v:
            return float(v)
    raise AssertionError("none found")


def test_modelopt_ct_modelopt_byte_identical(synth_dir, tmp_path, run_cli):
    src = copy_ckpt(synth_dir(fmt="modelopt", recipe="all-linear"), tmp_path / "src")
    trap = _non_roundtrip_f32()
    poke_f32(src, f"{L0}.mlp.down_proj.weight_scale_2", trap)
    ct, back = str(tmp_path / "ct"), str(tmp_path / "back")
    assert run_cli("convert", src, ct, "--to", "compressed-tensors").exit_code == 0
    assert run_cli("convert", ct, back, "--to", "modelopt").exit_code == 0
    a, b = tensor_bytes(src), tensor_bytes(back)
    assert a.keys() == b.keys()
    assert all(a[k] == b[k] for k in a), [k for k in a if a[k] != b[k]][:3]
    # the CT file itself holds the correctly rounded reciprocal, with the original recorded
    c = tensor_bytes(ct)
    g = struct.unpack("<f", c[f"{L0}.mlp.down_proj.weight_global_scale"][2])[0]
    assert np.float32(g) == np.float32(1) / np.float32(trap)
    assert formats.read(ct).metadata["safetensors_metadata"]["model.safetensors"]["nvfp4tools.exact_globals"]


def test_ct_config_accepted_by_compressedtensor_bytes(synth_dir, tmp_path, run_cli):
    qc_mod = pytest.importorskip("compressed_tensors.quantization")
    out = str(tmp_path / "ct")
    assert run_cli("convert", synth_dir(fmt="modelopt", recipe="experts-only"), out, "--to", "compressed-tensors").exit_code == 0
    with open(os.path.join(out, "config.json")) as fh:
        qc = json.load(fh)["quantization_config"]
    assert qc_mod.QuantizationConfig.model_validate(qc).format == "nvfp4-pack-quantized"
    assert not os.path.exists(os.path.join(out, "hf_quant_config.json"))  # no stale ModelOpt file
    r = run_cli("inspect", out, "--format", "json")
    assert r.exit_code == 0 and json.loads(r.stdout)["format"] == "compressed-tensors"


@pytest.mark.interop
def test_modelopt_to_ct_same_bytes_as_compressed_tensors_converter(oracles, tmp_path, run_cli):
    out = str(tmp_path / "ct")
    r = run_cli("convert", oracles["modelopt_nvfp4"], out, "--to", "compressed-tensors")
    assert r.exit_code == 0, r.stderr
    ours, theirs = tensor_bytes(out), tensor_bytes(oracles["ct_nvfp4"])
    assert ours.keys() == theirs.keys()
    assert [k for k in ours if ours[k] != theirs[k]] == []
    with open(os.path.join(out, "config.json")) as fh:
        mine = json.load(fh)["quantization_config"]
    with open(os.path.join(oracles["ct_nvfp4"], "config.json")) as fh:
        upstream = json.load(fh)["quantization_config"]
    assert mine["format"] == upstream["format"] and mine["ignore"] == upstream["ignore"]
    for side in ("tokenizer.json", "generation_config.json"):
        if os.path.exists(os.path.join(oracles["modelopt_nvfp4"], side)):
            assert os.path.exists(os.path.join(out, side))


def test_w4a16_to_ct_is_identity(synth_dir, tmp_path, run_cli):
    src = synth_dir(fmt="compressed-tensors-w4a16", recipe="all-linear")
    out = str(tmp_path / "o")
    assert run_cli("convert", src, out, "--to", "compressed-tensors").exit_code == 0
    a, b = tensor_bytes(src), tensor_bytes(out)
    assert a == b


@pytest.mark.parametrize("fmt,to", [("modelopt", "modelopt"), ("compressed-tensors", "compressed-tensors"),
                                    ("modelopt", "compressed-tensors"), ("compressed-tensors", "modelopt")])
def test_experts_fused_and_back(synth_dir, tmp_path, run_cli, fmt, to):
    """Per-expert -> fused (in the same or the other NVFP4 format) -> per-expert in the source's format is
    byte-identical. Fused compressed-tensors globals are [E] divisors: the originals of those whose
    reciprocal does not round-trip are recorded per expert, as single ones are."""
    src = synth_dir(fmt=fmt, recipe="all-linear")
    fused, back = str(tmp_path / "f"), str(tmp_path / "b")
    r = run_cli("convert", src, fused, "--to", to, "--experts", "fused")
    assert r.exit_code == 0, r.stderr
    assert run_cli("verify", fused).exit_code == 0
    t = formats.read(fused).tensors
    gu = t[f"{L0}.experts.gate_up_proj"]
    assert gu.shape == (8, 128, 128) and gu.scheme.name == "nvfp4" and gu.part("global_scale").stored_shape == (8,)
    assert run_cli("convert", fused, back, "--to", fmt, "--experts", "per-expert").exit_code == 0
    a, b = tensor_bytes(src), tensor_bytes(back)
    assert a.keys() == b.keys()
    for k in a:
        # compressed-tensors globals: the source has llm-compressor's [1], we write the converter's 0-d
        same_shape = a[k][1] == b[k][1] or {a[k][1], b[k][1]} == {(), (1,)}
        assert a[k][0] == b[k][0] and a[k][2] == b[k][2] and same_shape, k


def test_fused_layout_refuses_mismatched_gate_up(synth_dir, tmp_path, run_cli):
    src = copy_ckpt(synth_dir(fmt="modelopt", recipe="all-linear"), tmp_path / "s")
    poke_f32(src, f"{L0}.experts.2.up_proj.weight_scale_2", 0.125)
    r = run_cli("convert", src, str(tmp_path / "o"), "--to", "modelopt", "--experts", "fused")
    assert r.exit_code == 3 and "gate and up of expert 2" in r.stderr and "--experts per-expert" in r.stderr
    assert not os.path.exists(tmp_path / "o")
    assert not [n for n in os.listdir(tmp_path) if "nvfp4tools-tmp" in n]


def test_refusals(synth_dir, tmp_path, run_cli):
    src = synth_dir(fmt="modelopt", recipe="all-linear")
    r = run_cli("convert", src, src, "--to", "compressed-tensors")
    assert r.exit_code == 2 and "is the source" in r.stderr
    out = tmp_path / "exists"
    out.mkdir()
    r = run_cli("convert", src, str(out), "--to", "compressed-tensors")
    assert r.exit_code == 2 and "--force" in r.stderr
    assert run_cli("convert", src, str(out), "--to", "compressed-tensors", "--force").exit_code == 0
    # a destination that holds the source: --force would replace (delete) the folder the source is in
    holder = tmp_path / "holder"
    inner = copy_ckpt(src, holder / "src")
    r = run_cli("convert", inner, str(holder), "--to", "modelopt", "--force")
    assert r.exit_code == 2 and "holds the source" in r.stderr
    assert os.path.isfile(os.path.join(inner, "config.json"))
    w4 = synth_dir(fmt="compressed-tensors-w4a16", recipe="all-linear")
    r = run_cli("convert", w4, str(tmp_path / "x"), "--to", "modelopt")
    assert r.exit_code == 3 and "int4-g32-sym tensors have no exact modelopt form" in r.stderr and "lossless paths" in r.stderr


def test_dry_run_writes_nothing(synth_dir, tmp_path, run_cli):
    out = tmp_path / "o"
    r = run_cli("convert", synth_dir(fmt="modelopt", recipe="all-linear"), str(out), "--to", "compressed-tensors",
                "--dry-run", "--format", "json")
    assert r.exit_code == 0 and not out.exists()
    plan = json.loads(r.stdout)
    assert plan["lossless"] and plan["n_output_parts"] == 849
    # one tensor count: the plan's is the number of tensors the written output reads back as
    r = run_cli("convert", synth_dir(fmt="modelopt", recipe="all-linear"), str(out), "--to", "compressed-tensors",
                "--format", "json")
    rep = json.loads(r.stdout)
    assert rep["n_output_tensors"] == plan["n_output_tensors"] == len(formats.read(str(out)).tensors)


def test_sharding_and_index(synth_dir, tmp_path, run_cli):
    out = str(tmp_path / "o")
    assert run_cli("convert", synth_dir(fmt="modelopt", recipe="all-linear"), out, "--to", "compressed-tensors",
                   "--max-shard-size", "1MB").exit_code == 0
    assert os.path.isfile(os.path.join(out, "model.safetensors.index.json"))
    assert len([n for n in os.listdir(out) if n.endswith(".safetensors")]) > 1
    assert run_cli("inspect", out).exit_code == 0


def test_disk_full_leaves_nothing(synth_dir, tmp_path):
    """RLIMIT_FSIZE makes writes fail like a full disk: no output folder, no temp folder left."""
    import subprocess
    import sys

    src = synth_dir(fmt="modelopt", recipe="all-linear")
    out = tmp_path / "o"
    code = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            "resource.setrlimit(resource.RLIMIT_FSIZE, (200000, 200000)); "
            "from nvfp4tools.cli import main; main(sys.argv[1:])")
    r = subprocess.run([sys.executable, "-c", code, "convert", src, str(out), "--to", "compressed-tensors"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr[-800:]
    assert not out.exists() and not [n for n in os.listdir(tmp_path) if "tmp" in n]


def test_sigkill_mid_write_then_rerun(synth_dir, tmp_path):
    import subprocess
    import sys
    import time

    from nvfp4tools.synth import synthesize

    big = str(tmp_path / "big")
    synthesize(big, preset="gemma4-tiny", fmt="modelopt", recipe="all-linear", shards=1)
    out = tmp_path / "o"
    p = subprocess.Popen([sys.executable, "-c", "import time, sys\n"
                          "import nvfp4tools.convert as c\n"
                          "orig = c._job_chunks\n"
                          "def slow(*a, **k):\n"
                          "    for x in orig(*a, **k):\n"
                          "        time.sleep(0.01); yield x\n"
                          "c._job_chunks = slow\n"
                          "from nvfp4tools.cli import main; main(sys.argv[1:])",
                          "convert", big, str(out), "--to", "compressed-tensors"])
    time.sleep(2.0)
    p.kill()
    p.wait()
    assert not out.exists()  # only a hidden temp folder may remain, never a valid-looking output
    from nvfp4tools.convert import convert
    convert(big, str(out), "compressed-tensors")
    assert out.exists() and formats.read(str(out)).format == "compressed-tensors"


# -- GGUF ------------------------------------------------------------------------------------------

def test_modelopt_gguf_modelopt_round_trip(synth_dir, tmp_path, run_cli):
    src = synth_dir(fmt="modelopt", recipe="all-linear")
    g, back = str(tmp_path / "m.gguf"), str(tmp_path / "back")
    r = run_cli("convert", src, g, "--to", "gguf")
    assert r.exit_code == 0, r.stderr
    ck = formats.read(g)
    down = ck.tensors["blk.0.ffn_down_exps.weight"]
    assert down.scheme.name == "nvfp4" and down.shape == (8, 128, 64)
    assert ck.metadata["general.file_type"] == "MOSTLY_NVFP4"
    assert run_cli("convert", g, back, "--to", "modelopt").exit_code == 0
    a, b = tensor_bytes(src), tensor_bytes(back)
    text = {k: v for k, v in a.items() if "vision" not in k}
    assert text.keys() == b.keys() and all(text[k] == b[k] for k in text)


def test_w4a16_q4_0_round_trip_and_dequant(synth_dir, tmp_path, run_cli):
    import gguf
    from gguf import GGUFReader, quants

    from nvfp4tools.tensors import dequantize

    src = synth_dir(fmt="compressed-tensors-w4a16", recipe="all-linear", group_size=32)
    g, back = str(tmp_path / "q.gguf"), str(tmp_path / "back")
    assert run_cli("convert", src, g, "--to", "gguf").exit_code == 0
    assert run_cli("convert", g, back, "--to", "compressed-tensors").exit_code == 0
    a, b = tensor_bytes(src), tensor_bytes(back)
    text = {k: v for k, v in a.items() if "vision" not in k}
    assert text.keys() == b.keys() and all(text[k] == b[k] for k in text)
    # gguf-py's Q4_0 dequantization == our W4A16 dequantization, element by element
    ck = formats.read(src)
    r = {t.name: t for t in GGUFReader(g).tensors}
    t = r["blk.1.attn_q.weight"]
    theirs = quants.dequantize(t.data, gguf.GGMLQuantizationType.Q4_0)
    assert np.array_equal(theirs, dequantize(ck, ck.tensors["model.language_model.layers.1.self_attn.q_proj.weight"]))


def test_w4a16_group128_to_q4_0_repeats_scales(tmp_path, run_cli):
    from nvfp4tools.synth import synthesize

    src = str(tmp_path / "g128")
    synthesize(src, fmt="compressed-tensors-w4a16", group_size=128)
    g = str(tmp_path / "q.gguf")
    assert run_cli("convert", src, g, "--to", "gguf").exit_code == 0
    from nvfp4tools.tensors import dequantize
    from nvfp4tools.kernels_ref.ggml_quants import dequantize_q4_0
    from nvfp4tools.tensors import load_part

    s, q = formats.read(src), formats.read(g)
    w = dequantize(s, s.tensors["model.language_model.layers.0.mlp.up_proj.weight"])
    raw = np.asarray(load_part(q.root, q.tensors["blk.0.ffn_up.weight"].part("data")))
    assert np.array_equal(dequantize_q4_0(raw).reshape(w.shape), w)


def test_foreign_gemma4_gguf_cannot_go_back(tmp_path, run_cli):
    """A Gemma 4 GGUF neither nvfp4tools nor llama.cpp wrote (no rope_freqs, from which llama.cpp's
    Gemma 4 GGUFs give back the full layers' RoPE) is refused naming the missing tensor
    (formats/gguf_restore_gemma4.py; tests/test_gguf_back.py: llama.cpp's Gemma 4 GGUFs go back)."""
    from nvfp4tools.synth_gguf import write_gemma4_gguf

    g = write_gemma4_gguf(str(tmp_path / "x.gguf"), qtype="q4_0")["path"]
    r = run_cli("convert", g, str(tmp_path / "o"), "--to", "compressed-tensors")
    assert r.exit_code == 3 and "'rope_freqs.weight'" in r.stderr and not (tmp_path / "o").exists()


@pytest.mark.interop
def test_gguf_nvfp4_same_bytes_as_llama_cpp_converter(llama_cpp_ggufs, oracles, tmp_path, run_cli):
    from gguf import GGUFReader

    ours = str(tmp_path / "ours.gguf")
    assert run_cli("convert", oracles["modelopt_nvfp4"], ours, "--to", "gguf").exit_code == 0
    a = {t.name: t for t in GGUFReader(llama_cpp_ggufs["nvfp4"]).tensors}
    b = {t.name: t for t in GGUFReader(ours).tensors}
    assert a.keys() == b.keys()
    diff = [k for k in a if a[k].tensor_type != b[k].tensor_type or a[k].shape.tolist() != b[k].shape.tolist()
            or bytes(np.asarray(a[k].data).view(np.uint8)) != bytes(np.asarray(b[k].data).view(np.uint8))]
    assert diff == []


# -- lossy: quantizing with the reference quantizers --------------------------------------------------

@pytest.mark.interop
def test_quantize_bf16_matches_modelopt_export_bytes(oracles, tmp_path, run_cli):
    """BF16 model -> NVFP4 with --quantize: every weight, weight_scale and weight_scale_2 is
    byte-identical to what ModelOpt's own quantize + export_hf_checkpoint wrote for the same model
    (only input_scale is absent: it needs calibration data)."""
    fused, per = str(tmp_path / "f"), str(tmp_path / "p")
    r = run_cli("convert", oracles["bf16"], fused, "--to", "modelopt", "--allow-lossy", "--quantize", "nvfp4")
    assert r.exit_code == 0, r.stderr
    assert os.path.isfile(os.path.join(fused, "nvfp4tools_conversion_report.json"))
    assert run_cli("convert", fused, per, "--to", "modelopt", "--experts", "per-expert").exit_code == 0
    theirs, ours = tensor_bytes(oracles["modelopt_nvfp4"]), tensor_bytes(per)
    keys = [k for k in theirs if k.endswith((".weight", ".weight_scale", ".weight_scale_2"))]
    assert [k for k in keys if ours.get(k) != theirs[k]] == []
    rep = json.loads(run_cli("inspect", per, "--format", "json").stdout)
    assert [f for f in rep["findings"] if f["severity"] != "info"] == []


def test_quantize_needs_allow_lossy_and_reports_error(synth_dir, tmp_path, run_cli):
    src = synth_dir(fmt="bf16")
    r = run_cli("convert", src, str(tmp_path / "x"), "--to", "compressed-tensors", "--quantize", "int4")
    assert r.exit_code == 2 and "--allow-lossy" in r.stderr
    out = str(tmp_path / "q")
    r = run_cli("convert", src, out, "--to", "compressed-tensors", "--allow-lossy", "--quantize", "nvfp4",
                "--format", "json")
    assert r.exit_code == 0, r.stderr
    rep = json.loads(r.stdout)
    assert not rep["lossless"] and rep["lossy"]
    assert all(15 < x["sqnr_db"] < 25 for x in rep["lossy"])   # NVFP4 on Gaussian weights: ~20 dB
    assert json.loads(run_cli("verify", out, "--against", src, "--format", "json").stdout)["verdict"] == "pass"


def test_bf16_to_gguf_q4_0(synth_dir, tmp_path, run_cli):
    src = synth_dir(fmt="bf16", experts="fused")
    g = str(tmp_path / "q.gguf")
    r = run_cli("convert", src, g, "--to", "gguf", "--allow-lossy", "--quantize", "q4_0", "--format", "json")
    assert r.exit_code == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["lossy"] and all(x["to"] == "q4_0" for x in rep["lossy"])
    ck = formats.read(g)
    assert ck.tensors["blk.0.ffn_gate_up_exps.weight"].scheme.name == "q4_0"
    assert ck.metadata["general.file_type"] == "MOSTLY_Q4_0"
    assert run_cli("convert", src, str(tmp_path / "x.gguf"), "--to", "gguf", "--quantize", "q4_0").exit_code == 2


@pytest.mark.interop
def test_q4_0_equals_gguf_py_quantizing_llama_cpp_bf16(llama_cpp_ggufs, oracles, tmp_path, run_cli):
    """Same weights, same quantizer: our Q4_0 tensors == gguf-py's Q4_0 of llama.cpp's BF16 GGUF tensors."""
    import gguf
    from gguf import GGUFReader, quants

    ours = str(tmp_path / "q.gguf")
    assert run_cli("convert", oracles["bf16"], ours, "--to", "gguf", "--allow-lossy", "--quantize", "q4_0").exit_code == 0
    a = {t.name: t for t in GGUFReader(llama_cpp_ggufs["bf16"]).tensors}
    b = {t.name: t for t in GGUFReader(ours).tensors}
    assert a.keys() == b.keys()
    n = 0
    for name, t in b.items():
        if t.tensor_type != gguf.GGMLQuantizationType.Q4_0:
            continue
        src = quants.dequantize(a[name].data, a[name].tensor_type).astype(np.float32)
        want = quants.quantize(src, gguf.GGMLQuantizationType.Q4_0)
        assert bytes(np.asarray(t.data).view(np.uint8)) == bytes(np.asarray(want).view(np.uint8)), name
        n += 1
    assert n > 50


def _verify(src: str, out: str, to: str, mode: str = "sampled") -> int:
    """Verify an output again, as convert did after writing it."""
    from nvfp4tools.convert import Options, make_plan
    from nvfp4tools.convert.canon import View
    from nvfp4tools.convert.check import verify_output

    ck = formats.read(src)
    view = View(ck)
    try:
        return verify_output(make_plan(ck, Options(to), view), view, formats.read(out, to), mode)
    finally:
        view.close()


@pytest.mark.parametrize("mode", ["sampled", "full"])
def test_verification_catches_a_corrupted_copy(synth_dir, tmp_path, run_cli, mode):
    """A byte changed in a copied part after writing fails verification in both modes."""
    from nvfp4tools.errors import FormatError

    src = synth_dir(fmt="modelopt", recipe="all-linear")
    out = str(tmp_path / "ct")
    r = run_cli("convert", src, out, "--to", "compressed-tensors", "--verify", mode, "--format", "json")
    assert r.exit_code == 0 and json.loads(r.stdout)["verification"] == mode
    assert _verify(src, out, "compressed-tensors", mode) > 0
    t = formats.read(out).tensors[f"{L0}.self_attn.q_proj.weight"].part("data")
    with open(os.path.join(out, t.file), "r+b") as fh:
        fh.seek(t.offset + t.nbytes - 1)
        b = fh.read(1)
        fh.seek(t.offset + t.nbytes - 1)
        fh.write(bytes([b[0] ^ 0x10]))
    with pytest.raises(FormatError, match="differ"):
        _verify(src, out, "compressed-tensors", mode)


def test_verification_rereads_the_output_scales(synth_dir, tmp_path, run_cli):
    """A global changed after a passing verification fails the next one, whether it changes the
    multiplier the output means or only the bytes it stores."""
    from nvfp4tools.errors import FormatError

    src = synth_dir(fmt="modelopt", recipe="all-linear")
    out = str(tmp_path / "ct")
    assert run_cli("convert", src, out, "--to", "compressed-tensors").exit_code == 0
    assert _verify(src, out, "compressed-tensors") > 0
    g = formats.read(out).tensors[f"{L0}.self_attn.q_proj.weight"].part("global_scale")
    with open(os.path.join(out, g.file), "r+b") as fh:
        fh.seek(g.offset)
        b = fh.read(4)
        fh.seek(g.offset)
        fh.write(bytes([b[0] ^ 0x01]) + b[1:])   # 1 ulp: its reciprocal may round to the same multiplier
    with pytest.raises(FormatError, match="weight_global_scale' holds other bytes|global scale .* differs"):
        _verify(src, out, "compressed-tensors")
    with open(os.path.join(out, g.file), "r+b") as fh:
        fh.seek(g.offset)
        fh.write(b[:3] + bytes([b[3] ^ 0x01]))    # 2x: the multiplier differs too
    with pytest.raises(FormatError, match="global scale .* differs"):
        _verify(src, out, "compressed-tensors")


def test_a_writer_bug_in_the_globals_fails_the_conversion(synth_dir, tmp_path, monkeypatch):
    """The verification checks what the output's scalars mean through the re-read output, apart
    from the writer: a global the writer gets wrong (here 2x) fails, and nothing is left at DST."""
    import nvfp4tools.convert.encode as enc
    from nvfp4tools.convert import convert
    from nvfp4tools.errors import FormatError

    orig = enc.scalar_bytes

    def doubled(a, view, o, logical):
        b = orig(a, view, o, logical)
        return b[:3] + bytes([b[3] ^ 0x01]) if o.key.endswith("weight_global_scale") else b

    monkeypatch.setattr(enc, "scalar_bytes", doubled)
    src = synth_dir(fmt="modelopt", recipe="all-linear")
    with pytest.raises(FormatError, match="global scale .* differs"):
        convert(src, str(tmp_path / "ct"), "compressed-tensors")
    assert os.listdir(tmp_path) == []


def test_sampled_windows_cover_edges_and_every_64_mib():
    from nvfp4tools.convert.check import WINDOW, WINDOW_EVERY, _windows

    assert _windows(1000, True) == [(0, 1000)]                       # small parts: every byte
    n = 3 * WINDOW_EVERY + 10 * WINDOW
    w = _windows(n, True)
    assert (0, WINDOW) in w and (n - WINDOW, WINDOW) in w     # both edges
    assert sorted(o for o, _ in w)[1:-1] == [WINDOW_EVERY, 2 * WINDOW_EVERY, 3 * WINDOW_EVERY]
    assert all(0 <= o and o + ln <= n for o, ln in w)
    full = _windows(n, False)
    assert sum(ln for _, ln in full) == n


def test_nvfp4_to_q4_0_gguf_is_lossy_and_reported(synth_dir, tmp_path, run_cli):
    """--allow-lossy --quantize q4_0 requantizes NVFP4 linears to Q4_0 (for llama.cpp builds without
    NVFP4), reports per-tensor error, and writes router.per_expert_scale instead of folding it."""
    import gguf
    from gguf import GGUFReader, quants

    from nvfp4tools.tensors import dequantize

    src = synth_dir(fmt="modelopt", recipe="all-linear")
    r = run_cli("convert", src, str(tmp_path / "q4.gguf"), "--to", "gguf", "--allow-lossy", "--quantize", "q4_0",
                "--format", "json")
    assert r.exit_code == 0, r.stderr
    rep = json.loads(r.stdout)
    lossy = {x["tensor"]: x for x in rep["lossy"]}
    q_name = f"{L0}.self_attn.q_proj.weight"
    assert q_name in lossy and lossy[q_name]["sqnr_db"] > 15
    tensors = {t.name: t for t in GGUFReader(str(tmp_path / "q4.gguf")).tensors}
    t = tensors["blk.0.attn_q.weight"]
    assert t.tensor_type == gguf.GGMLQuantizationType.Q4_0
    assert "blk.0.ffn_down_exps.scale" in tensors
    ck = formats.read(src)
    want = dequantize(ck, ck.tensors[q_name])
    got = quants.dequantize(t.data, gguf.GGMLQuantizationType.Q4_0)
    sqnr = 10 * np.log10(np.sum(want.astype(np.float64) ** 2) / np.sum((got - want).astype(np.float64) ** 2))
    assert abs(sqnr - lossy[q_name]["sqnr_db"]) < 0.01


def test_gguf_q4_0_to_modelopt_says_how(synth_dir, tmp_path, run_cli):
    src = synth_dir(fmt="compressed-tensors-w4a16", recipe="all-linear", group_size=32)
    g = str(tmp_path / "q.gguf")
    assert run_cli("convert", src, g, "--to", "gguf").exit_code == 0
    r = run_cli("convert", g, str(tmp_path / "mo"), "--to", "modelopt", "--allow-lossy")
    assert r.exit_code == 3 and "convert to compressed-tensors first" in r.stderr and "Traceback" not in r.stderr
    assert not os.path.exists(tmp_path / "mo")


def test_stream_merges_adjacent_copies_and_keeps_write_order(tmp_path):
    """Kernel copies that continue each other become one request; writes land after the copies
    submitted before them, whatever the merging."""
    from nvfp4tools.convert.encode import CopyFrom
    from nvfp4tools.convert.stream import Stream

    data = bytes(range(256)) * 4
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    dst = tmp_path / "dst.bin"
    dst.write_bytes(b"\0" * len(data))
    fd = os.open(dst, os.O_WRONLY)
    s = Stream(fd)
    s.put(0, CopyFrom(str(src), 0, 100))
    s.put(100, CopyFrom(str(src), 100, 200))     # continues: merged
    assert s.run is not None and s.run[3] == 300
    s.put(10, b"\xaa\xbb")                       # after the copy that covers it
    s.put(300, CopyFrom(str(src), 300, len(data) - 300))
    s.close()
    os.close(fd)
    want = bytearray(data)
    want[10:12] = b"\xaa\xbb"
    assert dst.read_bytes() == bytes(want)


def test_stream_rides_over_gaps_and_writes_after_the_copies_that_cover_them(tmp_path):
    """Copies separated by the 4-byte gaps converted scalars fill are merged; when a long merged
    copy is handed out early (MAX_RUN), the small writes inside it follow it and the ones past its
    end wait for the copy that may still cover them."""
    from nvfp4tools.convert.encode import CopyFrom
    from nvfp4tools.convert.stream import Stream

    data = bytes(range(256)) * 4
    src = tmp_path / "src.bin"
    src.write_bytes(data)

    class Recorder(Stream):
        def __init__(self) -> None:
            self.ops = []
            self.run, self.small, self.unresolved = None, {}, []

        def _submit(self, pos, d) -> None:
            self.ops.append((pos, d))

        def _submit_small(self, writes) -> None:
            self.ops.extend(writes)

    def apply(ops) -> bytes:
        out = bytearray(len(data))
        for pos, d in ops:
            b = data[d.offset:d.offset + d.nbytes] if isinstance(d, CopyFrom) else d
            out[pos:pos + len(b)] = b
        return bytes(out)

    for max_run in (10_000, 100, 1):
        s = Recorder()
        s.MAX_RUN = max_run
        want = bytearray(data)
        pos = 0
        for size in (96, 150, 7, 300, 60):  # a copied part, then a 4-byte converted scalar
            s.put(pos, CopyFrom(str(src), pos, size))
            s.put(pos + size, b"\xaa\xbb\xcc\xdd")
            want[pos + size:pos + size + 4] = b"\xaa\xbb\xcc\xdd"
            pos += size + 4
        s.put(pos, CopyFrom(str(src), pos, len(data) - pos))
        s._flush_run()
        assert apply(s.ops) == bytes(want), max_run
        if max_run == 10_000:
            assert sum(isinstance(d, CopyFrom) for _, d in s.ops) == 1  # one merged copy


def test_stream_small_writes_follow_their_copy_and_marks_wait_for_them(tmp_path):
    """Small writes riding behind a copy are handed to the main thread only once that copy is done,
    and a mark holds only once everything put before it is in the file, small writes included."""
    import threading

    from nvfp4tools.convert.encode import CopyFrom
    from nvfp4tools.convert.stream import Stream

    data = bytes(range(256)) * 64
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    dst = tmp_path / "dst.bin"
    dst.write_bytes(b"\0" * len(data))
    gate = threading.Event()

    class Held(Stream):
        def _apply(self, pos, d):
            gate.wait(10)   # the writer thread copies only once the test lets it
            super()._apply(pos, d)

    fd = os.open(dst, os.O_WRONLY)
    s = Held(fd)
    half = len(data) // 2
    s.put(0, CopyFrom(str(src), 0, half - 4))
    s.put(half - 4, b"\xaa\xbb\xcc\xdd")             # rides behind the copy: the gap is source bytes
    s.put(half, CopyFrom(str(src), half, half))
    s.mark("all")
    s.flush()
    assert s.run is None and "all" in s.marks and s.done < s.submitted
    s.apply_small()                                       # not its turn yet: nothing written
    assert open(dst, "rb").read(half)[half - 4:] == b"\0" * 4
    gate.set()
    assert s.wait_mark("all")
    want = bytearray(data)
    want[half - 4:half] = b"\xaa\xbb\xcc\xdd"
    assert dst.read_bytes() == bytes(want)
    s.close()
    os.close(fd)


def test_copies_between_equally_aligned_offsets_start_on_64_kib(tmp_path, monkeypatch):
    """Where source and output offsets agree modulo 64 KiB, the first request stops at the boundary
    and the rest starts on it; otherwise one request. The bytes are the same either way."""
    import nvfp4tools.convert.stream as st
    from nvfp4tools.convert.encode import CopyFrom

    data = os.urandom(300_000)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    calls = []
    orig = st.copy_once

    def rec(s, d, n, so, do, name):
        calls.append((n, so, do))
        return orig(s, d, n, so, do, name)

    monkeypatch.setattr(st, "copy_once", rec)
    for src_off, dst_off, split in ((1000, 1000 + 65536, True), (1000, 1008, False)):
        calls.clear()
        dst = tmp_path / f"dst{dst_off}.bin"
        dst.write_bytes(b"\0" * (dst_off + len(data)))
        fd = os.open(dst, os.O_WRONLY)
        s = st.Stream(fd)
        s.put(dst_off, CopyFrom(str(src), src_off, len(data) - src_off))
        s.close()
        os.close(fd)
        assert dst.read_bytes()[dst_off:dst_off + len(data) - src_off] == data[src_off:]
        if split:
            assert len(calls) == 2 and calls[1][2] % st.COPY_ALIGN == 0 and calls[1][1] % st.COPY_ALIGN == 0
        else:
            assert len(calls) == 1


def test_header_pad_puts_the_first_copied_part_at_its_source_offset_mod_64_kib(synth_dir):
    """header_pad: what a safetensors writer may add to its header (spaces) so that the copies of a
    lossless ModelOpt -> compressed-tensors conversion start aligned on both sides."""
    from nvfp4tools.convert import Options, make_plan
    from nvfp4tools.convert.canon import View
    from nvfp4tools.convert.encode import direct_parts
    from nvfp4tools.convert.stream import COPY_ALIGN, header_pad

    ck = formats.read(synth_dir(fmt="modelopt", recipe="all-linear"))
    view = View(ck)
    try:
        p = make_plan(ck, Options("compressed-tensors"), view)
        offsets, off = {}, 0
        for o in (o for a in p.actions for o in a.outs):
            offsets[o.key], off = off, off + o.nbytes
        o, part = next(x for a in p.actions for x in (direct_parts(a, view) or {}).items())
        for start in (8 + 1000, 8 + 123456):   # header ends (8-byte aligned, as the writer pads)
            pad = header_pad(start, offsets, p.actions, view)
            assert 0 <= pad < COPY_ALIGN and pad % 8 == (part.offset - start) % 8 == 0
            assert (start + pad + offsets[o.key] - part.offset) % COPY_ALIGN == 0
        assert header_pad(8 + 1001, offsets, p.actions, view) == 0   # would unalign the data: none
        assert header_pad(8 + 1000, offsets, [], view) == 0          # nothing copied: none
    finally:
        view.close()


def test_a_corrupt_copy_is_caught_while_the_rest_is_still_copying(synth_dir, tmp_path, monkeypatch):
    """The output is re-read and checked tensor by tensor while later copies are still running: a
    kernel copy that lands one byte wrong (a planted fault in the copy step) fails the conversion,
    the writer thread is stopped, and nothing is left at DST or beside it."""
    import nvfp4tools.convert.stream as st
    from nvfp4tools.convert import convert
    from nvfp4tools.errors import FormatError

    orig = st.copy_once
    hit = []

    def faulty(s, d, n, so, do, name):
        k = orig(s, d, n, so, do, name)
        if not hit:   # the first byte of the first copy: a tensor's start, which the sampled check reads
            hit.append(do)
            b = os.pread(s, 1, so)
            os.pwrite(d, bytes([b[0] ^ 0x01]), do)
        return k

    monkeypatch.setattr(st, "copy_once", faulty)
    monkeypatch.setattr(st.Stream, "MAX_RUN", 4096)   # many copies, so some are in flight during the check
    src = synth_dir(fmt="modelopt", recipe="all-linear")
    with pytest.raises(FormatError, match="differ"):
        convert(src, str(tmp_path / "ct"), "compressed-tensors")
    assert hit and os.listdir(tmp_path) == []


@pytest.mark.parametrize("verify", ["sampled", "full"])
def test_a_slow_copy_is_waited_for_not_misread(synth_dir, tmp_path, monkeypatch, verify):
    """With the writer thread slowed down, the overlapped check waits for each tensor's bytes (and
    the small writes behind its copy) instead of reading them early: the conversion passes and the
    output equals the one written without overlap."""
    import time

    import nvfp4tools.convert.stream as st
    from nvfp4tools.convert import convert

    src = synth_dir(fmt="modelopt", recipe="all-linear")
    convert(src, str(tmp_path / "plain"), "compressed-tensors")
    orig = st.Stream._apply

    def slow(self, pos, d):
        time.sleep(0.002)
        orig(self, pos, d)

    monkeypatch.setattr(st.Stream, "_apply", slow)
    monkeypatch.setattr(st.Stream, "MAX_RUN", 64 * 1024)
    rep = convert(src, str(tmp_path / "slow"), "compressed-tensors", verify=verify)
    assert rep["verified_tensors"] > 50
    assert tensor_bytes(str(tmp_path / "slow")) == tensor_bytes(str(tmp_path / "plain"))


def _with_extratensor_bytes(src: str, dst: str, extra: dict) -> str:
    """A copy of checkpoint SRC with EXTRA tensors ({name: torch tensor}) added to its one shard."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    path = os.path.join(dst, "model.safetensors")
    tensors = load_file(path)
    tensors.update(extra)
    save_file(tensors, path)
    return dst


def test_0d_and_undecodable_tensors_are_copied_as_stored(synth_dir, tmp_path, run_cli):
    """A 0-d tensor (CLIP's logit_scale) and an unquantized tensor numpy cannot view (C64) go to a
    safetensors target byte for byte; GGUF refuses the second by name (no GGUF name, no GGUF type)."""
    import torch

    src = _with_extratensor_bytes(synth_dir(fmt="modelopt", recipe="all-linear"), str(tmp_path / "src"),
                              {"logit_scale": torch.tensor(2.5), "extra.complex": torch.ones(4, dtype=torch.complex64)})
    for to in ("compressed-tensors", "safetensors"):
        out = str(tmp_path / to)
        args = ("--allow-lossy",) if to == "safetensors" else ()
        r = run_cli("convert", src, out, "--to", to, *args)
        assert r.exit_code == 0, r.stderr
        from nvfp4tools import formats
        ck = formats.read(out)
        assert ck.tensors["logit_scale"].shape == () and ck.tensors["extra.complex"].parts[0].stored_dtype == "C64"
    r = run_cli("convert", src, str(tmp_path / "x.gguf"), "--to", "gguf")
    assert r.exit_code == 3 and "extra.complex" in r.stderr and "internal error" not in r.stderr


def test_gguf_tokenizer_link_out_of_the_folder_is_refused(synth_dir, tmp_path, run_cli):
    import shutil

    src = str(tmp_path / "src")
    shutil.copytree(synth_dir(fmt="modelopt", recipe="all-linear"), src)
    secret = tmp_path / "secret.json"
    secret.write_text('{"model": {"vocab": {"SECRET": 0}}}')
    if os.path.exists(os.path.join(src, "tokenizer.json")):
        os.remove(os.path.join(src, "tokenizer.json"))
    os.symlink(secret, os.path.join(src, "tokenizer.json"))
    out = tmp_path / "x.gguf"
    r = run_cli("convert", src, str(out), "--to", "gguf")
    assert r.exit_code == 3 and "tokenizer.json" in r.stderr and not out.exists()


def test_interrupt_while_the_cli_imports_is_one_line(monkeypatch, capsys):
    import builtins
    import sys

    from nvfp4tools.cli import main

    real = builtins.__import__

    def interrupted(name, *args, **kw):
        if name == "nvfp4tools.cli._root":
            raise KeyboardInterrupt
        return real(name, *args, **kw)

    monkeypatch.delitem(sys.modules, "nvfp4tools.cli._root", raising=False)
    monkeypatch.setattr(builtins, "__import__", interrupted)
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 130 and capsys.readouterr().err == "interrupted\n"


def test_gguf_without_a_tokenizer_loads_and_runs_in_llama_cpp(synth_dir, tmp_path, run_cli):
    """A source folder without tokenizer.json (the demo's synthetic checkpoint) converts to a GGUF whose
    vocabulary is 'none'; a config.json without rms_norm_eps and Gemma 4's rope_parameters gets
    transformers' defaults for them (the model computes with those):
    llama.cpp loads it and computes finite logits on token ids; the note says there is no vocabulary."""
    pytest.importorskip("llama_cpp")
    import gguf
    import numpy as np

    from tests.oracles.families import llama_logits

    from tests.helpers import edit_json

    src = copy_ckpt(synth_dir(fmt="modelopt", recipe="all-linear"), tmp_path / "src")
    assert not os.path.exists(os.path.join(src, "tokenizer.json"))

    def strip(c):   # as a hand-written config might: transformers fills both from Gemma4TextConfig
        c["text_config"].pop("rms_norm_eps")
        c["text_config"].pop("rope_parameters")
    edit_json(os.path.join(src, "config.json"), strip)
    out = str(tmp_path / "m.gguf")
    r = run_cli("convert", src, out, "--to", "gguf")
    assert r.exit_code == 0, r.stderr
    assert "no tokenizer.json in the source" in r.stdout + r.stderr
    fields = gguf.GGUFReader(out).fields
    model = fields["tokenizer.ggml.model"]
    assert bytes(model.parts[model.data[0]]).decode() == "none"
    eps = fields["gemma4.attention.layer_norm_rms_epsilon"]
    assert float(eps.parts[eps.data[0]][0]) == pytest.approx(1e-6)
    base = fields["gemma4.rope.freq_base"]
    assert float(base.parts[base.data[0]][0]) == 1e6
    assert "rope_freqs.weight" in {t.name for t in gguf.GGUFReader(out).tensors}
    logits = llama_logits(out, [1, 5, 9, 200, 7])
    assert logits.shape == (5, 512) and np.all(np.isfinite(logits)) and float(np.abs(logits).max()) > 0
    assert run_cli("verify", out).exit_code == 0
