"""tensors: verify and bench decode NVFP4 through convert's one decoder (convert.canon.View), with the
scale conventions of convert/scales.py, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from nvfp4tools import formats


def _nvfp4(ckpt):
    return [t for t in ckpt.tensors.values() if t.scheme.name == "nvfp4"]


@pytest.mark.parametrize("fmt,experts", [("modelopt", "per-expert"), ("modelopt", "fused"),
                                         ("compressed-tensors", "per-expert"), ("compressed-tensors", "fused")])
def test_canonical_nvfp4_is_converts_canon(synth_dir, fmt, experts):
    """canonical_nvfp4 returns View.canon's Canon; its array accessors agree with the packed fields."""
    from nvfp4tools.convert.canon import Canon, View
    from nvfp4tools.kernels_ref.fp4 import pack_nibbles_hf
    from nvfp4tools.tensors import canonical_nvfp4

    ckpt = formats.read(synth_dir(fmt=fmt, experts=experts))
    ts = _nvfp4(ckpt)
    assert ts and (experts == "per-expert" or any(len(t.shape) == 3 for t in ts))
    with View(ckpt) as view:
        for t in ts:
            c, v = canonical_nvfp4(ckpt, t), view.canon(t)
            assert isinstance(c, Canon) and c.kind == "nvfp4"
            assert np.array_equal(c.packed, v.packed) and np.array_equal(c.scale_bytes, v.scale_bytes)
            assert c.codes.dtype == np.uint8 and c.codes.shape == t.shape
            assert np.array_equal(pack_nibbles_hf(c.codes), c.packed)
            assert c.scale_bytes.dtype == np.uint8 and c.scale_bytes.shape == t.shape[:-1] + (t.shape[-1] // 16,)
            assert c.global_scale.dtype == np.float32 and c.global_scale.shape in ((1,), (t.shape[0],))
            assert c.global_scale.tolist() == v.global_mult
            if c.input_scale is not None:
                assert c.input_scale.dtype == np.float32 and c.input_scale.tolist() == v.input_mult


def test_divisor_globals_are_correctly_rounded_reciprocals(synth_dir):
    """compressed-tensors stores divisors: the multiplier is fp32(1/stored), the bits float32 division gives."""
    from nvfp4tools.tensors import canonical_nvfp4, scalar_part

    ckpt = formats.read(synth_dir(fmt="compressed-tensors"))
    for t in _nvfp4(ckpt)[:40]:
        for role, got in (("global_scale", canonical_nvfp4(ckpt, t).global_scale),
                          ("input_scale", canonical_nvfp4(ckpt, t).input_scale)):
            p = t.part(role)
            if p is None:
                continue
            assert p.stored_as == "divisor"
            want = (np.float32(1.0) / scalar_part(ckpt.root, p)).astype(np.float32)
            assert got.tobytes() == want.tobytes()


def test_verify_decodes_stored_divisors_as_engines_do_and_convert_takes_the_record(synth_dir, tmp_path):
    """A compressed-tensors checkpoint converted from ModelOpt records the originals of the globals whose
    reciprocal does not round-trip. verify's decoding ignores that record and takes fp32(1 / stored), as
    vLLM and SGLang do (it checks what deploys); convert's View takes the record (the bit-exact way back)."""
    from nvfp4tools.convert import convert
    from nvfp4tools.convert.canon import View
    from nvfp4tools.convert.scales import round_trips
    from nvfp4tools.tensors import canonical_nvfp4, dequantize

    src = formats.read(synth_dir(fmt="modelopt"))
    convert(src.root, str(tmp_path / "ct"), "compressed-tensors", verify="none")
    ct = formats.read(str(tmp_path / "ct"))
    trapped = 0
    with View(ct) as view:
        for t in _nvfp4(src):
            out = ct.tensors[t.name]
            assert out.part("global_scale").stored_as == "divisor"
            g = canonical_nvfp4(src, t).global_scale
            stored = np.asarray(view.values(out.part("global_scale")), np.float32)
            engine = (np.float32(1.0) / stored).astype(np.float32)
            assert canonical_nvfp4(ct, out).global_scale.tobytes() == engine.tobytes()
            assert view.canon(out).global_scale.tobytes() == g.tobytes()
            if round_trips(float(g[0])):
                assert dequantize(ct, out).tobytes() == dequantize(src, t).tobytes()
            else:
                trapped += 1
    assert trapped   # the synthetic model has globals in the 1-ulp reciprocal trap


def test_gguf_nvfp4_without_a_scale_sidecar_has_a_global_of_one(tmp_path):
    """block_nvfp4 without a '.scale': the scale bytes come out of the blocks, the global is 1.0 (per expert)."""
    import gguf

    from nvfp4tools.kernels_ref.fp4 import gguf_nvfp4_blocks
    from nvfp4tools.kernels_ref.ggml_quants import dequantize_blocks
    from nvfp4tools.tensors import canonical_nvfp4, dequantize

    rng = np.random.default_rng(0)
    shapes = {"blk.0.attn_q.weight": (64, 128), "blk.0.ffn_up_exps.weight": (2, 64, 128)}
    made = {}
    w = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "llama")
    w.add_block_count(1)
    for name, shape in shapes.items():
        packed = rng.integers(0, 256, shape[:-1] + (shape[-1] // 2,), dtype=np.uint8)
        sb = rng.integers(0x20, 0x40, shape[:-1] + (shape[-1] // 16,), dtype=np.uint8)
        made[name] = (packed, sb)
        w.add_tensor(name, gguf_nvfp4_blocks(packed, sb), raw_dtype=gguf.GGMLQuantizationType.NVFP4)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    ckpt = formats.read(str(tmp_path / "m.gguf"))
    for name, shape in shapes.items():
        t = ckpt.tensors[name]
        assert t.scheme.name == "nvfp4" and t.part("global_scale") is None
        c = canonical_nvfp4(ckpt, t)
        packed, sb = made[name]
        assert np.array_equal(c.packed, packed) and np.array_equal(c.scale_bytes, sb)
        assert c.global_scale.tolist() == [1.0] * (shape[0] if len(shape) == 3 else 1) and c.input_scale is None
        # the same weights as ggml's own block decoding
        blocks = np.asarray(gguf_nvfp4_blocks(packed, sb)).reshape(-1, 36)
        assert np.array_equal(dequantize(ckpt, t).reshape(-1), dequantize_blocks("NVFP4", blocks).reshape(-1))


def test_canonical_nvfp4_refuses_other_schemes(synth_dir):
    from nvfp4tools.errors import UnsupportedError
    from nvfp4tools.tensors import canonical_nvfp4

    ckpt = formats.read(synth_dir(fmt="compressed-tensors-w4a16"))
    t = next(t for t in ckpt.tensors.values() if t.scheme.quantized)
    with pytest.raises(UnsupportedError, match="not NVFP4"):
        canonical_nvfp4(ckpt, t)


def test_numpy_dtypes_come_from_the_one_table():
    """formats/_dtypes.py: values (8-bit floats as bytes) or bits (16-bit floats as uint16, to copy exactly)."""
    from nvfp4tools.convert.canon import np_dtype
    from nvfp4tools.formats._dtypes import DTYPES

    assert np_dtype("F16") == np.float16 and np_dtype("F16", bits=True) == np.uint16
    assert np_dtype("BF16") is None and np_dtype("BF16", bits=True) == np.uint16
    assert np_dtype("F8_E4M3") == np.uint8 and np_dtype("I32") == np.int32 and np_dtype("F32", bits=True) == np.float32
    assert np_dtype("F4") is None and np_dtype("NVFP4") is None and np_dtype("Q4_0", bits=True) is None
    for name, d in DTYPES.items():
        if d.numpy:
            assert np_dtype(name).itemsize * 8 == d.bits
