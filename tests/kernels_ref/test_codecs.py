"""Reference codecs pinned bit by bit: every E2M1 code, all 256 E4M3/UE4M3 bytes, nibble orders
with binary literals, signbit, swizzle and packing round trips; GGML codecs bit-exact with gguf-py."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nvfp4tools.kernels_ref import fp4, fp8, ggml_quants, int4, spec, swizzle
from nvfp4tools.kernels_ref.gemm import gemm_emulated, gemm_reference

# -- E2M1 ---------------------------------------------------------------------------------------

E2M1 = [(0b0000, 0.0), (0b0001, 0.5), (0b0010, 1.0), (0b0011, 1.5), (0b0100, 2.0), (0b0101, 3.0),
        (0b0110, 4.0), (0b0111, 6.0), (0b1000, -0.0), (0b1001, -0.5), (0b1010, -1.0), (0b1011, -1.5),
        (0b1100, -2.0), (0b1101, -3.0), (0b1110, -4.0), (0b1111, -6.0)]


@pytest.mark.parametrize("code,value", E2M1)
def test_every_e2m1_code(code, value):
    v = fp4.decode_e2m1(np.array([code], np.uint8))[0]
    assert v == value and np.signbit(v) == np.signbit(value)
    if code != 0b1000:  # -0.0 encodes as +0 (ModelOpt sets the sign bit only for x < 0)
        assert fp4.encode_e2m1(np.array([value], np.float32))[0] == code


@pytest.mark.parametrize("x,code", [
    (0.25, 0b0000), (0.2500001, 0b0001), (0.75, 0b0010), (1.25, 0b0010), (1.75, 0b0100), (2.5, 0b0100),
    (3.5, 0b0110), (5.0, 0b0110), (5.0001, 0b0111), (100.0, 0b0111), (-0.75, 0b1010), (-5.0, 0b1110),
    (-0.1, 0b1000), (-0.0, 0b0000), (np.inf, 0b0111)])
def test_e2m1_round_half_to_even_and_saturation(x, code):
    """Ties at 0.75/1.75/3.5 round up to the even mantissa, at 0.25/1.25/2.5/5 down."""
    assert fp4.encode_e2m1(np.array([x], np.float32))[0] == code


def test_spec_table_matches_codec():
    assert tuple(fp4.decode_e2m1(np.arange(16, dtype=np.uint8)).tolist()) == spec.E2M1_VALUES


def test_nibble_order_hf():
    # element 2i low, element 2i+1 high: [1, 2] -> 0b0010_0001
    assert fp4.pack_nibbles_hf(np.array([[0b0001, 0b0010]], np.uint8))[0, 0] == 0b0010_0001
    assert fp4.unpack_nibbles_hf(np.array([[0b1111_0011]], np.uint8)).tolist() == [[0b0011, 0b1111]]


def test_nibble_order_gguf():
    # within a 16-block, byte j holds element j (low) and element j+8 (high)
    codes = np.arange(16, dtype=np.uint8)[None]
    packed = fp4.pack_nibbles_gguf(codes)[0]
    assert packed.tolist() == [j | ((j + 8) << 4) for j in range(8)]
    assert packed[0] == 0b1000_0000 and packed[7] == 0b1111_0111


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 5), st.integers(1, 8), st.integers(0, 2**32 - 1))
def test_nibble_round_trips(rows, blocks, seed):
    c = np.random.default_rng(seed).integers(0, 16, (rows, blocks * 16), dtype=np.uint8)
    assert np.array_equal(fp4.unpack_nibbles_hf(fp4.pack_nibbles_hf(c)), c)
    assert np.array_equal(fp4.unpack_nibbles_gguf(fp4.pack_nibbles_gguf(c)), c)


# -- E4M3 / UE4M3 ---------------------------------------------------------------------------------

ALL = np.arange(256, dtype=np.uint8)


def test_all_256_e4m3_bytes():
    ours = fp8.decode_e4m3(ALL)
    ref = ALL.view(ml_dtypes.float8_e4m3fn).astype(np.float64)
    bits = fp8.decode_e4m3_bits(ALL)
    nan = np.isin(ALL, [0x7F, 0xFF])
    assert np.array_equal(np.isnan(ours), nan) and np.array_equal(np.isnan(bits), nan)
    assert np.array_equal(ours[~nan], ref[~nan]) and np.array_equal(bits[~nan], ref[~nan])
    assert np.array_equal(np.signbit(bits[~nan]), ALL[~nan] >= 0x80)
    back = fp8.encode_e4m3(ours[~nan])
    assert np.array_equal(back, ALL[~nan])  # every finite byte round-trips, -0 included
    assert fp8.decode_e4m3(np.array([0x7E], np.uint8))[0] == spec.E4M3_MAX
    assert fp8.decode_e4m3(np.array([0x01], np.uint8))[0] == 2.0 ** -9


def test_all_256_ue4m3_bytes_match_gguf():
    q = pytest.importorskip("gguf.quants")
    assert np.array_equal(fp8.decode_ue4m3_ggml(ALL), q.NVFP4.ue4m3_to_fp32(ALL).astype(np.float32))
    # E2M1 doubled x halved UE4M3 == E2M1 x E4M3 for every positive finite scale byte
    pos = ALL[(ALL > 0) & (ALL < 0x7F)]
    assert np.array_equal(fp8.decode_ue4m3_ggml(pos) * 2, fp8.decode_e4m3(pos))


# -- swizzle ----------------------------------------------------------------------------------------

@settings(max_examples=30, deadline=None)
@given(st.integers(1, 300), st.integers(1, 20), st.integers(0, 2**32 - 1))
def test_swizzle_round_trip(m, k, seed):
    s = np.random.default_rng(seed).integers(0, 256, (m, k), dtype=np.uint8)
    flat = swizzle.swizzle_128x4(s)
    assert flat.size == (-(-m // 128) * 128) * (-(-k // 4) * 4)
    assert np.array_equal(swizzle.unswizzle_128x4(flat, m, k), s)


def test_swizzle_offset_formula():
    m, k = 300, 13
    s = (np.arange(m * k) % 251).astype(np.uint8).reshape(m, k)
    flat = swizzle.swizzle_128x4(s)
    for (i, j) in [(0, 0), (1, 0), (32, 0), (33, 5), (127, 12), (128, 3), (299, 12)]:
        assert flat[swizzle.swizzled_offset(i, j, k)] == s[i, j]
    # line r32 of a tile holds rows r32, r32+32, r32+64, r32+96
    assert flat[16:20].tolist() == s[1, 0:4].tolist() and flat[20:24].tolist() == s[33, 0:4].tolist()


# -- int4 (compressed-tensors pack-quantized) -------------------------------------------------------

def test_int4_pack_bits():
    q = np.arange(-8, 8, dtype=np.int8)[None]          # stored as q + 8 = 0..15
    words = int4.pack_int4_to_int32(q)
    assert words.view(np.uint32).tolist() == [[0x76543210, 0xFEDCBA98]]
    assert np.array_equal(int4.unpack_int32_to_int4(words, 16), q)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 4), st.integers(1, 70), st.integers(0, 2**32 - 1))
def test_int4_round_trip_with_padding(rows, n, seed):
    q = np.random.default_rng(seed).integers(-8, 8, (rows, n), dtype=np.int8)
    assert np.array_equal(int4.unpack_int32_to_int4(int4.pack_int4_to_int32(q), n), q)


def test_int4_matches_compressed_tensors_packer():
    torch = pytest.importorskip("torch")
    helpers = pytest.importorskip("compressed_tensors.compressors.pack_quantized.helpers")
    q = np.random.default_rng(1).integers(-8, 8, (8, 64), dtype=np.int8)
    theirs = helpers.pack_to_int32(torch.from_numpy(q), 4).numpy()
    assert np.array_equal(int4.pack_int4_to_int32(q), theirs)


# -- GGML codecs, bit-exact with gguf-py ---------------------------------------------------------------

@pytest.mark.parametrize("qtype", ["Q4_0", "Q8_0"])
def test_ggml_quantize_bit_exact_with_gguf(qtype):
    import gguf
    from gguf import quants

    rng = np.random.default_rng(11)
    x = np.concatenate([rng.standard_normal((64, 256)).astype(np.float32),
                        np.zeros((1, 256), np.float32), np.full((1, 256), -3.0, np.float32)])
    t = getattr(gguf.GGMLQuantizationType, qtype)
    ours = ggml_quants.quantize_q4_0(x) if qtype == "Q4_0" else ggml_quants.quantize_q8_0(x)
    theirs = quants.quantize(x, t)
    assert np.array_equal(ours, theirs)
    deq = ggml_quants.dequantize_q4_0(ours) if qtype == "Q4_0" else ggml_quants.dequantize_q8_0(ours)
    assert np.array_equal(deq, quants.dequantize(theirs, t))


def test_q4_0_split_join():
    x = np.random.default_rng(2).standard_normal((4, 64)).astype(np.float32)
    raw = ggml_quants.quantize_q4_0(x)
    codes, d = ggml_quants.q4_0_split(raw)
    assert codes.shape == (4, 64) and d.shape == (4, 2)
    assert np.array_equal(ggml_quants.q4_0_join(codes, d), raw)


def test_gguf_nvfp4_blocks_dequantize_like_gguf():
    """HF codes + E4M3 bytes repacked into GGUF blocks dequantize (by gguf-py) to E2M1 x e4m3 exactly."""
    import gguf
    from gguf import quants

    from nvfp4tools.kernels_ref.nvfp4 import quantize_nvfp4

    w = np.random.default_rng(5).standard_normal((8, 128)).astype(np.float32)
    t = quantize_nvfp4(w, np.float32(1.0))
    codes = fp4.unpack_nibbles_hf(t.packed)
    blocks = ggml_quants.nvfp4_to_gguf_blocks(codes, t.block_scale)
    assert blocks.shape == (8, 2 * 36)
    theirs = quants.dequantize(blocks, gguf.GGMLQuantizationType.NVFP4)
    exact = fp4.decode_e2m1(codes).reshape(8, -1, 16) * fp8.decode_e4m3(t.block_scale)[..., None]
    assert np.array_equal(theirs, exact.reshape(8, 128))
    assert np.array_equal(ggml_quants.dequantize_blocks("NVFP4", blocks.reshape(-1, 36)).reshape(8, 128), theirs)
    c2, s2 = ggml_quants.gguf_blocks_to_nvfp4(blocks)
    assert np.array_equal(c2, codes) and np.array_equal(s2, t.block_scale)


# -- GEMM -------------------------------------------------------------------------------------------

def test_gemm_reference_vs_emulated():
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((16, 2048)).astype(np.float32), rng.standard_normal((64, 2048)).astype(np.float32)
    ref, emu = gemm_reference(x, w), gemm_emulated(x, w)
    assert ref.dtype == np.float64 and np.linalg.norm(emu - ref) / np.linalg.norm(ref) < 1e-6
