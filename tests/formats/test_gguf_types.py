"""Every ggml block type: kernels_ref.ggml_quants dequantizes like gguf-py and like libggml itself, bit
for bit; the in-block scale table (BLOCK_SCALES) says where the scales are; verify and inspect --deep
pass on GGUFs of every type and name the layer whose scales are broken; llama.cpp's own quantized
files (llama_model_quantize: Q4_0, Q8_0, Q4_K_M) of every family verify and decode like gguf-py."""

from __future__ import annotations

import ctypes
import glob
import json
import os

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import quants
from gguf.constants import GGML_QUANT_SIZES

from nvfp4tools.formats._ggml_types import BLOCK_SCALES, BY_NAME
from nvfp4tools.kernels_ref.ggml_quants import DEQUANTIZERS, dequantize_blocks, ksigns_iq2xs

# the block types gguf-py dequantizes (its _type_traits), plus the plain floats
GGUF_PY_TYPES = sorted({t.name for t in quants._type_traits} | {"F32", "F16"})
QUANTIZED = [n for n in DEQUANTIZERS if n not in ("F32", "F16", "BF16")]


def _bits_equal(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal bit patterns (NaN payloads included): what "bit-exact" means."""
    a, b = np.ascontiguousarray(a, np.float32), np.ascontiguousarray(b, np.float32)
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def _random_blocks(name: str, n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, BY_NAME[name][1]), dtype=np.uint8)


def test_every_gguf_py_type_has_a_dequantizer():
    assert set(GGUF_PY_TYPES) <= set(DEQUANTIZERS)


@pytest.mark.parametrize("name", GGUF_PY_TYPES)
def test_equals_gguf_py_on_random_blocks(name):
    """Any bytes, NaN and infinite scales included: the same bit patterns as gguf-py."""
    blocks = _random_blocks(name, 1024)
    with np.errstate(all="ignore"):
        theirs = quants.dequantize(blocks.reshape(-1), getattr(T, name))
    assert _bits_equal(dequantize_blocks(name, blocks).reshape(-1), theirs.reshape(-1))


def _gguf_py_quantizes(name: str) -> bool:
    try:
        quants.quantize(np.zeros((1, BY_NAME[name][0] * (256 // BY_NAME[name][0] or 1)), np.float32), getattr(T, name))
    except NotImplementedError:
        return False
    return True


@pytest.mark.parametrize("name", [n for n in GGUF_PY_TYPES if n not in ("F32", "F16") and _gguf_py_quantizes(n)])
def test_equals_gguf_py_on_what_gguf_py_quantizes(name):
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.standard_normal((64, 512)).astype(np.float32), np.zeros((1, 512), np.float32),
                        np.full((1, 512), -3.0, np.float32), 1e-3 * rng.standard_normal((2, 512)).astype(np.float32)])
    q = quants.quantize(x, getattr(T, name))
    ours = dequantize_blocks(name, q.reshape(-1, BY_NAME[name][1])).reshape(x.shape)
    assert _bits_equal(ours, quants.dequantize(q, getattr(T, name)))


def test_ksigns_by_parity_equals_ggml_table():
    assert np.array_equal(ksigns_iq2xs(), np.frombuffer(quants.IQ2_XXS.ksigns, np.uint8))


# -- libggml itself (the C dequantize_row_* of llama-cpp-python's build) -------------------------------

def _libggml():
    try:
        import llama_cpp
    except ImportError:
        pytest.skip("llama-cpp-python not installed (its libggml-base is the C oracle)")
    libs = glob.glob(os.path.join(os.path.dirname(llama_cpp.__file__), "lib", "libggml-base.*"))
    if not libs:
        pytest.skip("libggml-base not found in llama-cpp-python's lib folder")
    lib = ctypes.CDLL(libs[0])
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_void_p]
    return lib


def _c_dequantize(lib, name: str, blocks: np.ndarray) -> np.ndarray:
    fn = getattr(lib, "dequantize_row_" + (name[:-2].lower() + "_K" if name.endswith("_K") else name.lower()))
    fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64], None
    blocks = np.ascontiguousarray(blocks, np.uint8)
    out = np.empty(blocks.shape[0] * BY_NAME[name][0], np.float32)
    fn(blocks.ctypes.data, out.ctypes.data, out.size)
    return out


@pytest.mark.parametrize("name", QUANTIZED)
def test_equals_libggml(name):
    """ggml quantizes (ggml_quantize_chunk, an importance matrix of ones for the IQ types that need
    one) and dequantizes (dequantize_row_*); ours decodes those blocks, and random ones, to the same
    bits."""
    lib = _libggml()
    block, tsize = BY_NAME[name]
    rows, cols = 16, 512
    x = np.random.default_rng(5).standard_normal((rows, cols)).astype(np.float32)
    imatrix = np.ones(cols, np.float32)
    q = np.zeros((rows, cols // block * tsize), np.uint8)
    n = lib.ggml_quantize_chunk(getattr(T, name).value, x.ctypes.data, q.ctypes.data, 0, rows, cols,
                                imatrix.ctypes.data)
    assert n == q.nbytes
    blocks = q.reshape(-1, tsize)
    assert _bits_equal(dequantize_blocks(name, blocks).reshape(-1), _c_dequantize(lib, name, blocks))
    # random blocks hold NaN scales: a C compiler may turn "* -1.f" into a sign flip, so a NaN's sign
    # and payload are not the C code's to promise; every other value must match bit for bit
    rnd = _random_blocks(name, 512, seed=9)
    ours, theirs = dequantize_blocks(name, rnd).reshape(-1), _c_dequantize(lib, name, rnd)
    nan = np.isnan(theirs)
    assert np.array_equal(np.isnan(ours), nan) and _bits_equal(ours[~nan], theirs[~nan])


# -- where the scales are ------------------------------------------------------------------------------

def _set_fields(blocks: np.ndarray, name: str, f16: int, byte: int, roles=("d", "min")) -> np.ndarray:
    b = blocks.copy()
    for f in BLOCK_SCALES[name]:
        if f.role not in roles:
            continue
        for k in range(f.count):
            if f.kind == "f16":
                b[:, f.offset + 2 * k:f.offset + 2 * k + 2] = np.array([f16], "<u2").view(np.uint8)
            else:
                b[:, f.offset + k] = byte
    return b


@pytest.mark.parametrize("name", sorted(BLOCK_SCALES))
def test_block_scales_table_matches_the_codecs(name):
    """Zeroing every listed scale zeroes the block; a NaN in every multiplying fp16 scale makes every
    value NaN; one more E8M0 step doubles an MXFP4 block."""
    blocks = _random_blocks(name, 256, seed=1)
    with np.errstate(all="ignore"):
        if name == "MXFP4":
            lo = _set_fields(blocks, name, 0, 120)
            hi = _set_fields(blocks, name, 0, 121)
            assert np.array_equal(dequantize_blocks(name, hi), 2 * dequantize_blocks(name, lo))
            return
        assert not np.any(dequantize_blocks(name, _set_fields(blocks, name, 0x0000, 0x00)))
        if any(f.kind == "f16" for f in BLOCK_SCALES[name]):
            assert np.all(np.isnan(dequantize_blocks(name, _set_fields(blocks, name, 0x7E00, 0x00, roles=("d",)))))


# -- GGUFs of every type: verify and inspect --deep ----------------------------------------------------

def _sane_blocks(name: str, rows: int, cols: int, seed: int) -> np.ndarray:
    """Random codes with finite, small scales: a well-formed tensor of NAME (any bytes are codes)."""
    rng = np.random.default_rng(seed)
    block, tsize = BY_NAME[name]
    b = rng.integers(0, 256, (rows * cols // block, tsize), dtype=np.uint8)
    scales = (np.float16(1e-3) + np.float16(2e-3) * rng.random(b.shape[0]).astype(np.float16)).astype("<f2")
    for f in BLOCK_SCALES.get(name, ()):
        for k in range(f.count):
            if f.kind == "f16":
                b[:, f.offset + 2 * k:f.offset + 2 * k + 2] = scales.view(np.uint8).reshape(-1, 2)
            elif f.kind == "ue4m3":
                b[:, f.offset + k] = rng.integers(0x28, 0x40, b.shape[0])
            else:
                b[:, f.offset + k] = rng.integers(118, 126, b.shape[0])
    if name == "IQ1_M":   # d is the top nibble of four scale words: 0x1C00 (~0.004)
        words = b[:, 48:56].copy().view("<u2")
        words &= np.uint16(0x0FFF)
        words |= (np.uint16(0x1C00) >> (4 * np.arange(4, dtype=np.uint16)) & np.uint16(0xF)) << np.uint16(12)
        b[:, 48:56] = words.view(np.uint8)
    return b.reshape(rows, -1)


@pytest.fixture(scope="module")
def every_type_gguf(tmp_path_factory):
    """One GGUF with a [64, 512] attention weight of every quantized ggml type, layer i = type i."""
    import gguf

    path = str(tmp_path_factory.mktemp("types") / "every-type.gguf")
    w = gguf.GGUFWriter(path, "llama")
    names = {}
    for i, name in enumerate(QUANTIZED):
        tname = f"blk.{i}.attn_q.weight"
        w.add_tensor(tname, _sane_blocks(name, 64, 512, seed=i), raw_dtype=getattr(T, name))
        names[name] = tname
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path, names


def test_every_type_verifies_and_inspects_clean(every_type_gguf, run_cli):
    path, names = every_type_gguf
    r = run_cli("verify", path, "--format", "json")
    assert r.exit_code == 0, r.stdout[-2000:] + r.stderr
    rows = {x["name"]: x for x in json.loads(r.stdout)["layers"]}
    for name, tname in names.items():
        row = rows[tname]
        assert row["scheme"] == name.lower() and row["verdict"] == "pass", row
        # path A (ours) and path B (gguf-py) decode the same bits: only Q1_0 has no gguf-py codec
        assert row["path_rel_err"] == (None if name == "Q1_0" else 0.0), (name, row["path_rel_err"])
    d = run_cli("inspect", path, "--deep", "--format", "json")
    findings = json.loads(d.stdout)["findings"]
    assert d.exit_code == 0 and all(f["severity"] != "error" for f in findings), findings


@pytest.mark.parametrize("name", ["Q4_0", "Q4_K", "Q6_K", "IQ4_XS", "IQ2_XXS", "TQ1_0", "NVFP4", "MXFP4"])
def test_broken_scale_named_by_verify_and_inspect(every_type_gguf, run_cli, tmp_path, name):
    """One bad scale inside one block: verify fails that layer (well_formed), inspect --deep reports it."""
    from nvfp4tools import formats

    path, names = every_type_gguf
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(open(path, "rb").read())
    part = formats.read(str(bad)).tensors[names[name]].part("data")
    f = BLOCK_SCALES[name][0]
    poison = {"f16": b"\x00\x7e", "ue4m3": b"\x7f", "e8m0": b"\xff"}[f.kind]
    with open(bad, "r+b") as fh:
        fh.seek(part.offset + 7 * BY_NAME[name][1] + f.offset)
        fh.write(poison)
    r = run_cli("verify", str(bad), "--format", "json")
    assert r.exit_code == 1
    failed = [x for x in json.loads(r.stdout)["layers"] if x["verdict"] == "fail"]
    assert [x["name"] for x in failed] == [names[name]] and "well_formed" in failed[0]["failed_checks"], failed
    assert "1 " in failed[0]["problems"][0], failed[0]["problems"]
    d = run_cli("inspect", str(bad), "--deep", "--format", "json")
    assert d.exit_code == 1
    f_ = [x for x in json.loads(d.stdout)["findings"] if x["code"] == "block_scale_nonfinite"]
    assert f_ and f_[0]["tensor"] == names[name], json.loads(d.stdout)["findings"]


def test_zeroed_scales_are_degenerate(every_type_gguf, run_cli, tmp_path):
    from nvfp4tools import formats

    path, names = every_type_gguf
    bad = tmp_path / "zero.gguf"
    bad.write_bytes(open(path, "rb").read())
    part = formats.read(str(bad)).tensors[names["Q6_K"]].part("data")
    raw = bytearray(open(bad, "rb").read())
    off = BLOCK_SCALES["Q6_K"][0].offset
    for i in range(part.nbytes // BY_NAME["Q6_K"][1]):
        at = part.offset + i * BY_NAME["Q6_K"][1] + off
        raw[at:at + 2] = b"\0\0"
    bad.write_bytes(bytes(raw))
    d = json.loads(run_cli("inspect", str(bad), "--deep", "--format", "json").stdout)
    assert any(f["code"] == "degenerate_layer" and f["tensor"] == names["Q6_K"] for f in d["findings"]), d["findings"]
    v = json.loads(run_cli("verify", str(bad), "--format", "json").stdout)
    assert [x["name"] for x in v["layers"] if x["verdict"] == "fail"] == [names["Q6_K"]]


def test_verify_reads_one_expert_of_a_stack(tmp_path, run_cli):
    """A stacked [E, out, in] GGUF tensor is verified expert by expert: E rows, each with its
    expert index, and the dequantized expert equals gguf-py's slice of the whole tensor."""
    import gguf

    from nvfp4tools import formats
    from nvfp4tools.tensors import dequantize, expert_slice

    path = str(tmp_path / "moe.gguf")
    w = gguf.GGUFWriter(path, "qwen3moe")
    raw = _sane_blocks("Q4_K", 4 * 32, 256, seed=2).reshape(4, 32, -1)
    w.add_tensor("blk.0.ffn_up_exps.weight", raw, raw_dtype=T.Q4_K)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    ck = formats.read(path)
    t = ck.tensors["blk.0.ffn_up_exps.weight"]
    assert t.shape == (4, 32, 256) and t.n_experts_fused == 4
    whole = quants.dequantize(gguf.GGUFReader(path).tensors[0].data, T.Q4_K)
    for e in range(4):
        assert _bits_equal(dequantize(ck, expert_slice(t, e)), whole[e])
    rep = json.loads(run_cli("verify", path, "--format", "json").stdout)
    assert [(x["expert"], x["shape"]) for x in rep["layers"]] == [(e, [32, 256]) for e in range(4)]
    s = json.loads(run_cli("verify", path, "--sample", "2", "--format", "json").stdout)
    assert len(s["layers"]) == 2 and s["verdict"] == "pass"


def test_stacked_experts_match_a_fused_original_expert_by_expert(synth_dir, run_cli):
    """Verified one expert at a time, a fused quantized gate_up / down still finds its counterpart in
    an original that fuses them too (the same seed: same weights)."""
    q, orig = synth_dir(fmt="modelopt", experts="fused"), synth_dir(fmt="bf16", experts="fused")
    rep = json.loads(run_cli("verify", q, "--against", orig, "--format", "json").stdout)
    experts = [x for x in rep["layers"] if x["role"] == "experts"]
    assert experts and all(x["expert"] is not None and x["against"] for x in experts)
    assert rep["summary"]["against"]["n_unmatched"] == 0 and rep["verdict"] == "pass"


# -- llama.cpp's own quantized files -------------------------------------------------------------------

FAMILIES = ("llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen3_moe", "deepseek_v3", "gpt_oss", "phi3")


@pytest.mark.interop
@pytest.mark.parametrize("kind", ["q4_0.gguf", "q8_0.gguf", "q4_k_m.gguf"])
@pytest.mark.parametrize("family", FAMILIES)
def test_llama_cpp_quantized_files_verify(family_oracle, run_cli, family, kind):
    """llama_model_quantize's mixed-type files (Q4_0 with Q8_0 rows, Q4_K_M with Q4_K/Q6_K and
    fallbacks): verify and inspect --deep pass, and every tensor dequantizes as gguf-py does."""
    from gguf import GGUFReader

    from nvfp4tools import formats
    from nvfp4tools.tensors import dequantize

    path = family_oracle(family, kind)
    r = run_cli("verify", path, "--format", "json")
    assert r.exit_code == 0, r.stdout[-2000:] + r.stderr
    rep = json.loads(r.stdout)
    assert all(x["path_rel_err"] == 0.0 for x in rep["layers"]), [x["name"] for x in rep["layers"] if x["path_rel_err"]]
    d = run_cli("inspect", path, "--deep")
    assert d.exit_code == 0, d.stdout[-2000:]
    ck = formats.read(path)
    types = set()
    for t in GGUFReader(path).tensors:
        ours = ck.tensors.get(t.name)
        if ours is None:   # an NVFP4 sidecar
            continue
        types.add(t.tensor_type.name)
        theirs = quants.dequantize(t.data, t.tensor_type).reshape(ours.shape)
        assert _bits_equal(dequantize(ck, ours), theirs), t.name
    quantized = {"q4_0.gguf": "Q4_0", "q8_0.gguf": "Q8_0", "q4_k_m.gguf": "Q4_K"}[kind]
    assert quantized in types or (kind == "q4_k_m.gguf" and types & {"Q5_0", "Q6_K"}), types
