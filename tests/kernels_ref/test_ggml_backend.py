"""The ggml-cpu verify backend: llama.cpp's own CPU mul_mat (through llama-cpp-python's libggml) on
real GGUFs written by llama.cpp and by nvfp4tools, and on safetensors repacked to ggml blocks; the
activation mirror bit for bit against ggml's own quantizer; pinned output bits where the arithmetic
is exact; planted faults in what the backend receives fail it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nvfp4tools.kernels_ref import ggml_backend as G
from nvfp4tools.kernels_ref.dispatch import LayerCase, NotRunnable, get
from nvfp4tools.kernels_ref.gemm import gemm_reference

pytestmark = pytest.mark.skipif(G.available() is not None, reason=f"ggml-cpu cannot run here: {G.available()}")


def _rel(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


def _verify(run_cli, path, *extra):
    r = run_cli("verify", path, "--backend", "ref,ggml-cpu", "--format", "json", *extra)
    return r.exit_code, json.loads(r.stdout)


def _ggml_rows(rep):
    return [b for x in rep["layers"] for b in x["backends"] if b["backend"] == "ggml-cpu"]


# -- the binding ------------------------------------------------------------------------------------

def test_unavailable_reason_names_the_missing_library(monkeypatch):
    G._load.cache_clear()
    try:
        monkeypatch.setattr(G, "lib_dir", lambda: None)
        why = G.available()
        assert why.startswith("llama-cpp-python's libggml not found") and "pip install llama-cpp-python" in why
    finally:
        monkeypatch.undo()
        G._load.cache_clear()
    assert G.available() is None


def test_library_agrees_with_the_type_table():
    """Every quantized type of formats._ggml_types: the library's name and block geometry match, and
    ggml-cpu has a vec_dot for it, except the two that are activation-only (Q8_1, Q8_K)."""
    from nvfp4tools.formats._ggml_types import BY_NAME, UNQUANTIZED

    lib = G.library()
    problems = {n: lib.type_problem(n) for n in BY_NAME if n not in UNQUANTIZED}
    assert {n for n, p in problems.items() if p} == {"Q8_1", "Q8_K"}, problems
    assert "no vec_dot" in problems["Q8_K"] and "no vec_dot" in problems["Q8_1"], problems
    assert {n: lib.vec_dot_type(n) for n in ("Q4_0", "Q4_1", "Q8_0", "NVFP4", "MXFP4", "Q4_K", "IQ4_XS")} == {
        "Q4_0": "Q8_0", "Q4_1": "Q8_1", "Q8_0": "Q8_0", "NVFP4": "Q8_0", "MXFP4": "Q8_0", "Q4_K": "Q8_K",
        "IQ4_XS": "Q8_K"}


@pytest.mark.parametrize("qtype,block,head,qoff", [("Q8_0", 32, 34, 2), ("Q8_1", 32, 36, 4), ("Q8_K", 256, 292, 4)])
def test_activation_mirror_is_ggmls_quantizer_bit_for_bit(qtype, block, head, qoff):
    """The reference's activations are what ggml-cpu's own from_float makes of x (its q and d)."""
    x = np.random.default_rng(3).standard_normal(8192).astype(np.float32) * 3
    x[:7] = [0.0, -0.0, 1e-30, 127.5, -0.5, 2.5, 3.5]   # a zero, a tiny, and values on rounding ties
    b = G.library().from_float(qtype, x).reshape(-1, head)
    d = b[:, :4].copy().view("<f4") if qtype == "Q8_K" else b[:, :2].copy().view("<f2").astype(np.float32)
    ggml = (b[:, qoff:qoff + block].view(np.int8).astype(np.float32) * d).reshape(-1)
    assert np.array_equal(ggml, G.activations_as_ggml(x[None], qtype)[0])
    if qtype == "Q8_1":   # and the fp16 block sums s that Q4_1 / Q5_1 multiply their minimum with
        assert np.array_equal(b[:, 2:4].copy().view("<f2").astype(np.float32)[:, 0], G._q8_1_sums(x[None])[0][0])


# -- pinned bits: inputs whose products and sums are exact in float32, so every SIMD path agrees --------

def _x_ints(m, k, seed=0):
    x = np.random.default_rng(seed).integers(-127, 128, (m, k)).astype(np.float32)
    x[:, ::32] = 127.0   # amax 127 per 32-block and per 256-block: Q8 d = 1 (Q8_K: -1), q = x exactly
    return x


def test_q4_0_pinned():
    x = _x_ints(2, 64)
    nib = np.random.default_rng(5).integers(0, 16, (2, 64)).astype(np.uint8)
    from nvfp4tools.kernels_ref.ggml_quants import q4_0_join
    raw = q4_0_join(nib, np.full((2, 2), 0.5, np.float16)).reshape(2, -1)
    w = (nib.astype(np.float32) - 8) * 0.5
    y = G.run(LayerCase("q4_0", x, w, ggml_type="Q4_0", ggml_bytes=raw))
    assert np.array_equal(G.activations_as_ggml(x, "Q8_0"), x)
    assert np.array_equal(y, (x.astype(np.float64) @ w.T.astype(np.float64)).astype(np.float32))
    assert y.tolist() == [[-1804.5, 26.0], [-434.5, -1078.5]]
    assert y.view(np.uint32).tolist() == [[0xC4E19000, 0x41D00000], [0xC3D94000, 0xC486D000]]


def test_nvfp4_pinned_and_out_scale():
    """GGUF block_nvfp4 from canonical codes (the byte-wise repack), UE4M3 0x38 = 1.0 (ggml: x 0.5 of
    the doubled E2M1 table), the global multiplied into the output."""
    from nvfp4tools.kernels_ref.fp4 import decode_e2m1

    x = _x_ints(1, 64, seed=1)
    codes = np.random.default_rng(6).integers(0, 16, (2, 64)).astype(np.uint8)
    sb = np.full((2, 4), 0x38, np.uint8)
    raw = G.nvfp4_blocks(codes, sb)
    w = decode_e2m1(codes).astype(np.float32)
    y = G.run(LayerCase("nvfp4", x, w * 0.25, ggml_type="NVFP4", ggml_bytes=raw, ggml_out_scale=0.25))
    assert np.array_equal(y, (x.astype(np.float64) @ (w * 0.25).T).astype(np.float32))
    assert y.tolist() == [[485.5, -830.0]] and y.view(np.uint32).tolist() == [[0x43F2C000, 0xC44F8000]]


def test_q4_k_through_q8_k_pinned():
    """A K-quant (activations to Q8_K): one block with every 6-bit scale 1, minimum 0, d = 1."""
    x = _x_ints(1, 256, seed=2)
    b = np.zeros(144, np.uint8)
    b[0:2] = np.array([1.0], "<f2").view(np.uint8)             # d
    b[4:8] = 1                                                   # scales 0-3 (6 bits): 1; mins 0
    b[12:16] = 1                                                 # scales 4-7 low nibbles: 1
    b[16:] = (np.arange(128) * 37 % 256).astype(np.uint8)      # qs
    from nvfp4tools.tensors import dequantize_ggml
    w = dequantize_ggml("Q4_K", b, 256).reshape(1, 256)
    assert set(np.unique(w)) <= set(range(16))
    y = G.run(LayerCase("q4_k", x, w, ggml_type="Q4_K", ggml_bytes=b.reshape(1, -1)))
    assert np.array_equal(y, (x.astype(np.float64) @ w.T).astype(np.float32))
    assert y.tolist() == [[11173.0]] and y.view(np.uint32).tolist() == [[0x462E9400]]


# -- every type against the mirrored reference; the tolerance against what Q8 costs ---------------------

def _random_blocks(name, n, k, rng):
    from nvfp4tools.formats._ggml_types import BLOCK_SCALES, BY_NAME

    blk, nb = BY_NAME[name]
    raw = rng.integers(0, 256, (n, k // blk, nb), dtype=np.uint8)
    for f in BLOCK_SCALES.get(name, ()):
        if f.kind == "f16":
            v = rng.uniform(0.5, 1.5, (n, k // blk, f.count)) * (0.01 if f.role == "d" else 0.002)
            raw[..., f.offset:f.offset + 2 * f.count] = v.astype("<f2").view(np.uint8)
        elif f.kind == "ue4m3":
            raw[..., f.offset:f.offset + f.count] = rng.integers(0x20, 0x40, (n, k // blk, f.count))
        else:
            raw[..., f.offset] = rng.integers(118, 124, (n, k // blk))
    return raw.reshape(n, -1)


@pytest.mark.parametrize("name", ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
                                  "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ4_NL", "IQ4_XS",
                                  "TQ1_0", "TQ2_0", "MXFP4", "NVFP4", "Q1_0"])
def test_every_type_within_tolerance_of_the_mirrored_reference(name):
    from nvfp4tools.tensors import dequantize_ggml

    rng = np.random.default_rng(1)
    n, k, m = 96, 2048, 8
    raw = _random_blocks(name, n, k, rng)
    w = dequantize_ggml(name, raw, n * k).reshape(n, k)
    x = rng.standard_normal((m, k)).astype(np.float32)
    case = LayerCase(name, x, w, ggml_type=name, ggml_bytes=raw)
    y = G.run(case)
    err = _rel(y, G.reference(case))
    assert err <= get("ggml-cpu").tolerance_rel / 5, err
    # against unquantized activations ggml is ~5e-3 off: the Q8 step the mirror accounts for
    assert 2e-3 < _rel(y, gemm_reference(x, w)) < 2e-2


def test_the_smallest_code_change_in_a_full_size_layer_fails():
    """One Q4_0 code moved by one step (d) in one block of a 2816 x 2112 layer (Gemma-4-26B's
    shape): ~8e-5 against the mirrored reference, 8x the tolerance; ggml itself sits ~1e-7 off."""
    from nvfp4tools.kernels_ref.ggml_quants import quantize_q4_0
    from nvfp4tools.tensors import dequantize_ggml

    rng = np.random.default_rng(0)
    n, k = 2816, 2112
    raw = np.asarray(quantize_q4_0((rng.standard_normal((n, k)) * 0.02).astype(np.float32))).reshape(n, -1)
    w = dequantize_ggml("Q4_0", raw, n * k).reshape(n, k)
    case = LayerCase("l", rng.standard_normal((16, k)).astype(np.float32), w, ggml_type="Q4_0", ggml_bytes=raw)
    ref, tol = G.reference(case), get("ggml-cpu").tolerance_rel
    assert _rel(G.run(case), ref) < tol / 20
    raw2 = raw.copy()
    raw2[100, 2 + 5] ^= 0x01
    assert _rel(G.run(LayerCase("l", case.x, w, ggml_type="Q4_0", ggml_bytes=raw2)), ref) > 5 * tol


def test_preconditions_are_checked_before_ggml_asserts():
    lib = G.library()
    x = np.ones((1, 48), np.float32)
    with pytest.raises(NotRunnable, match="multiple of the Q4_0 block"):
        lib.mul_mat("Q4_0", np.zeros((1, 27), np.uint8), x)
    with pytest.raises(NotRunnable, match="ggml_row_size"):
        lib.mul_mat("Q4_0", np.zeros((1, 17), np.uint8), np.ones((1, 32), np.float32))
    with pytest.raises(NotRunnable, match="no vec_dot"):
        lib.mul_mat("Q8_K", np.zeros((1, 292), np.uint8), np.ones((1, 256), np.float32))
    with pytest.raises(NotRunnable, match="multiple of the GGUF NVFP4 block"):
        G.nvfp4_blocks(np.zeros((2, 48), np.uint8), np.zeros((2, 3), np.uint8))
    with pytest.raises(NotRunnable, match="no ggml form"):
        G.run(LayerCase("none", x, np.ones((1, 48), np.float32)))


# -- verify on real checkpoints ------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["q4_0.gguf", "q8_0.gguf", "q4_k_m.gguf", "nvfp4.gguf"])
def test_llama_cpp_ggufs_pass(family_oracle, run_cli, kind):
    """GGUFs written by llama.cpp (its converter; llama_model_quantize), as stored: every layer ran."""
    code, rep = _verify(run_cli, family_oracle("llama", kind))
    assert code == 0 and rep["verdict"] == "pass", rep["backends"]
    state = {b["name"]: b for b in rep["backends"]}["ggml-cpu"]
    assert state["state"] == "ran" and state["n_layers"] == rep["summary"]["n_layers"] and state["reason"] is None
    errs = [b["rel_err"] for b in _ggml_rows(rep)]
    assert len(errs) == rep["summary"]["n_layers"] and max(errs) < 1e-6


def test_stacked_experts_with_per_expert_scale_pass(family_oracle, run_cli):
    """llama.cpp's NVFP4 GGUF of a MoE: [E, out, in] blocks with a '.scale' per expert, expert by expert."""
    code, rep = _verify(run_cli, family_oracle("qwen3_moe", "nvfp4.gguf"))
    assert code == 0 and any(x["expert"] is not None for x in rep["layers"])
    assert len(_ggml_rows(rep)) == rep["summary"]["n_layers"]


@pytest.mark.parametrize("fmt", ["modelopt", "compressed-tensors", "compressed-tensors-w4a16"])
def test_safetensors_and_project_ggufs_pass(run_cli, synth_dir, tmp_path, fmt):
    """Safetensors NVFP4 / int4 repacked to block_nvfp4 / Q4_0 in memory, and the GGUF nvfp4tools
    writes from them (NVFP4, Q4_0): the same layers pass both ways."""
    src = synth_dir(fmt=fmt, recipe="all-linear")
    out = str(tmp_path / "c.gguf")
    assert run_cli("convert", src, out, "--to", "gguf").exit_code == 0
    for path in (src, out):
        code, rep = _verify(run_cli, path, "--sample", "24")
        assert code == 0 and rep["verdict"] == "pass", path
        assert len(_ggml_rows(rep)) == 24 and max(b["rel_err"] for b in _ggml_rows(rep)) < 1e-6


def test_layers_without_a_lossless_ggml_type_are_skipped_saying_why(run_cli, synth_dir):
    code, rep = _verify(run_cli, synth_dir(fmt="compressed-tensors-w4a16", recipe="all-linear", group_size=16),
                        "--sample", "5")
    why = "int4 group 16 is not a multiple of 32; no ggml block holds it exactly"
    state = {b["name"]: b for b in rep["backends"]}["ggml-cpu"]
    assert code == 0 and rep["verdict"] == "pass"
    assert (state["state"], state["reason"], state["n_layers"], state["n_skipped"]) == ("not_applicable", why, 0, 5)
    assert state["skipped"] == [{"reason": why, "n_layers": 5}]
    assert all(x["backends_skipped"] == [{"backend": "ggml-cpu", "reason": why}] for x in rep["layers"])


# -- planted faults in what the backend receives --------------------------------------------------------

def _plant(monkeypatch, fault):
    """Wrap verify.ggml_weight so that the layer FAULT picks gets corrupted ggml input."""
    import nvfp4tools.verify as V

    real = V.ggml_weight

    def patched(ckpt, t, case_kw):
        kw = real(ckpt, t, case_kw)
        return fault(t, kw) if "ggml_bytes" in kw else kw

    monkeypatch.setattr(V, "ggml_weight", patched)


@pytest.mark.parametrize("kind", ["q4_0.gguf", "nvfp4.gguf"])
def test_one_flipped_code_nibble_fails(family_oracle, run_cli, monkeypatch, kind):
    path = family_oracle("llama", kind)
    target = "blk.1.ffn_down.weight"

    def flip(t, kw):
        if t.name.startswith(target):
            raw = np.array(kw["ggml_bytes"])
            raw[3, 20] ^= 0x08         # one element's code in one block (inside qs for Q4_0 and NVFP4)
            kw = dict(kw, ggml_bytes=raw)
        return kw

    _plant(monkeypatch, flip)
    code, rep = _verify(run_cli, path)
    bad = [x for x in rep["layers"] if x["verdict"] == "fail"]
    assert code == 1 and [x["name"] for x in bad] == [x["name"] for x in rep["layers"] if x["name"].startswith(target)]
    assert bad[0]["failed_checks"] == ["backend"]
    b = {r["backend"]: r for r in bad[0]["backends"]}
    g = b["ggml-cpu"]
    assert b["ref"]["pass"] and not g["pass"] and g["rel_err"] > 10 * g["tolerance_rel"]


@pytest.mark.parametrize("fault", ["global_dropped", "global_twice"])
def test_wrong_global_scale_fails(synth_dir, run_cli, monkeypatch, fault):
    """The scale-handling bugs engines have had: a global scale not applied, or applied twice."""
    def wrong(t, kw):
        s = kw.get("ggml_out_scale", 1.0)
        return dict(kw, ggml_out_scale=1.0 if fault == "global_dropped" else s * s)

    _plant(monkeypatch, wrong)
    code, rep = _verify(run_cli, synth_dir(fmt="modelopt", recipe="all-linear"), "--sample", "6")
    assert code == 1 and all(x["failed_checks"] == ["backend"] for x in rep["layers"])


def test_wrong_nibble_order_repack_fails(synth_dir, run_cli, monkeypatch):
    """Safetensors NVFP4 handed to ggml in HF nibble order (element 2i low, 2i+1 high) instead of
    block_nvfp4's (j low, j+8 high): the layout mix-up the repack exists to get right."""
    from nvfp4tools.kernels_ref import fp4

    monkeypatch.setattr(fp4, "hf_packed_to_gguf_qs", lambda packed: np.ascontiguousarray(packed, np.uint8))
    code, rep = _verify(run_cli, synth_dir(fmt="compressed-tensors", recipe="all-linear"), "--sample", "6")
    assert code == 1 and all(x["failed_checks"] == ["backend"] for x in rep["layers"])
