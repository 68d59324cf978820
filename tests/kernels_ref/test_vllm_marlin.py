"""The vllm-marlin backend's parts that need no GPU: its unavailable reasons (true for the machine, saying how
to build the library), the torch parts of vLLM's weight preparation (pinned against values derived from
vLLM's documented layout and arithmetic, not against the code under test), and its reference. On a GPU:
tests/test_gpu_marlin.py."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from nvfp4tools.kernels_ref import vllm_marlin as V
from nvfp4tools.kernels_ref.dispatch import LayerCase, NotRunnable

torch = pytest.importorskip("torch")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def fresh(monkeypatch):
    V._load.cache_clear()
    yield monkeypatch
    monkeypatch.undo()
    V._load.cache_clear()


# -- available() ---------------------------------------------------------------------------------------------

def test_exports_for_registration():
    assert V.BACKEND_NAME == "vllm-marlin" and 0 < V.TOLERANCE_REL < 5e-3
    assert V.DESCRIPTION and V.TOLERANCE_SOURCE
    assert callable(V.available) and callable(V.run) and callable(V.reference)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_no_cuda_is_the_reason_here():
    assert V.available() == "no CUDA device (torch.cuda.is_available() is False)"


def test_no_torch_is_the_reason(fresh):
    fresh.setitem(sys.modules, "torch", None)
    assert V.available() == "torch is not installed (pip install 'nvfp4tools[gpu]')"


@pytest.mark.parametrize("cc, words", [((10, 0), "FlashInfer / CUTLASS FP4"), ((12, 0), "FlashInfer / CUTLASS FP4"),
                                       ((7, 5), "targets 8.0-9.x")])
def test_compute_capability_outside_marlin_says_what_vllm_does_there(fresh, cc, words):
    fresh.setattr(torch.cuda, "is_available", lambda: True)
    fresh.setattr(torch.cuda, "get_device_capability", lambda *a: cc)
    why = V.available()
    assert why.startswith(f"compute capability {cc[0]}.{cc[1]}") and words in why, why


def test_missing_library_says_how_to_build_it(fresh, tmp_path):
    fresh.setattr(V, "_device_reason", lambda: (None, (9, 0)))
    fresh.delenv(V.ENV, raising=False)
    fresh.setattr(V, "DEFAULT_LIB", str(tmp_path / V.LIB_NAME))
    why = V.available()
    assert why.startswith(f"no vllm-marlin library ({V.ENV} is not set and {tmp_path / V.LIB_NAME} does not exist)")
    assert "bash bench/build_marlin_fp4.sh" in why and "--fetch-src" in why
    fresh.setenv(V.ENV, str(tmp_path / "nope.so"))
    assert f"{V.ENV}={tmp_path / 'nope.so'} is not a file" in V.available()


def test_library_of_another_architecture_is_refused(fresh, tmp_path):
    lib = tmp_path / V.LIB_NAME
    lib.write_bytes(b"")
    (tmp_path / (V.LIB_NAME + ".arch")).write_text("80\n")
    fresh.setattr(V, "_device_reason", lambda: (None, (9, 0)))
    fresh.setenv(V.ENV, str(lib))
    assert V.available() == (f"{lib} was built for sm_80, this GPU is sm_90: rebuild it with "
                             f"`CUDA_ARCH=90 bash bench/build_marlin_fp4.sh`")


def test_unloadable_library_says_so(fresh, tmp_path):
    lib = tmp_path / V.LIB_NAME
    lib.write_bytes(b"not an ELF file")
    fresh.setattr(V, "_device_reason", lambda: (None, (9, 0)))
    fresh.setenv(V.ENV, str(lib))
    why = V.available()
    assert why.startswith(f"cannot load {lib}: ") and "\n" not in why


def test_build_script_without_sources_says_how_to_get_them(tmp_path):
    r = subprocess.run(["bash", os.path.join(ROOT, "bench", "build_marlin_fp4.sh")], capture_output=True, text=True,
                       env={**os.environ, "MARLIN_SRC": str(tmp_path / "src"), "MARLIN_OUT": str(tmp_path / "out")})
    assert r.returncode == 2
    assert r.stderr.strip() == (f"no vLLM Marlin sources in {tmp_path / 'src'}: run 'bash bench/build_marlin_fp4.sh "
                                f"--fetch-src' on a machine with the network")


# -- run() refuses what Marlin's FP4 path does not take, before it needs a GPU -------------------------------------

def _case(n=64, k=128, m=3, seed=0):
    from nvfp4tools.kernels_ref.fp4 import unpack_nibbles_hf
    from nvfp4tools.kernels_ref.nvfp4 import dequantize_nvfp4, quantize_nvfp4

    rng = np.random.default_rng(seed)
    q = quantize_nvfp4(rng.standard_normal((n, k)).astype(np.float32) * 0.02)
    x = rng.standard_normal((m, k)).astype(np.float32)
    return LayerCase("l", x, dequantize_nvfp4(q), codes=unpack_nibbles_hf(q.packed), scale_bytes=q.block_scale,
                     global_scale=float(q.global_scale))


def test_non_nvfp4_layers_are_not_runnable():
    c = _case()
    c.codes = None
    with pytest.raises(NotRunnable, match="not an NVFP4 layer"):
        V.run(c)


def test_nvfp4_layer_without_the_library_raises_the_reason(fresh):
    fresh.setattr(V, "_device_reason", lambda: ("no CUDA device (torch.cuda.is_available() is False)", None))
    with pytest.raises(RuntimeError, match="no CUDA device"):
        V.run(_case())


# -- vLLM's ScalarType id and padding ---------------------------------------------------------------------------

def test_float4_e2m1f_id():
    # exponent 2 (bits 0-7), mantissa 1 (8-15), signed (16), bias 0 (17-48), finite_values_only (49), NaN none (50-57)
    assert V.FLOAT4_E2M1F_ID == 2 + (1 << 8) + (1 << 16) + (1 << 49) == 562949953487106


@pytest.mark.parametrize("nk, padded", [
    ((2112, 2816), (2112, 2816)), ((2816, 2112), (2816, 2112)), ((704, 2816), (704, 2816)), ((2816, 704), (2816, 704)),
    ((2112, 2112), (2112, 2176)),      # neither family: (2112, 2176) and (2176, 2112) tie, the first is kept
    ((100, 48), (128, 64)),            # (128, 128) vs (128, 64)
    ((64, 80), (64, 128)),             # (64, 128) vs (128, 80)
])
def test_padding_to_a_marlin_tile_family(nk, padded):
    assert V.marlin_padded_nk(*nk) == padded
    pn, pk = padded
    assert (pn % 64 == 0 and pk % 128 == 0) or (pn % 128 == 0 and pk % 64 == 0)


# -- scales: the permutation and the S0E5M3 bytes -----------------------------------------------------------------

def test_permute_scales_transposes_each_8x8_block():
    """scale_perm[8i + j] = i + 8j: every 64 consecutive scales (row-major over [K/16, N]) are an 8 x 8 block
    read column-major."""
    k, n = 256, 128
    s = torch.arange(k // 16 * n, dtype=torch.float32).reshape(k // 16, n)
    got = V.permute_scales(s, k, n).numpy()
    want = s.numpy().reshape(-1, 8, 8).transpose(0, 2, 1).reshape(k // 16, n)
    assert np.array_equal(got, want)


def _s0e5m3(b: np.ndarray) -> np.ndarray:
    """Marlin's scale byte as the half-precision value it was cut from: 5 exponent bits (bias 15), 3 mantissa bits."""
    e, m = (b >> 3).astype(np.int64), (b & 7).astype(np.float64)
    return np.where(e == 0, m / 8 * 2.0 ** -14, (1 + m / 8) * 2.0 ** (e - 15))


def _e4m3_all_positive() -> np.ndarray:
    b = np.arange(0, 0x7F, dtype=np.uint8)                 # every positive finite E4M3 byte (0x7F is NaN)
    return b


def _decode_e4m3(b: np.ndarray) -> np.ndarray:
    return torch.from_numpy(b).view(torch.float8_e4m3fn).float().numpy().astype(np.float64)


@pytest.mark.parametrize("dtype", ["bfloat16", "half"])
@pytest.mark.parametrize("top", [448.0, 1.0])
def test_process_scales_bytes_are_the_scales_times_factor_times_128(dtype, top):
    """Every positive E4M3 scale becomes the byte of s * sf * 2^7 (sf: the largest power of two keeping the
    largest scale at most 448, for bf16; 1 for fp16), or 0 where that is below 2."""
    a_dtype = getattr(torch, dtype)
    b = _e4m3_all_positive()
    s = _decode_e4m3(b)
    s = np.minimum(s, top)                                  # the largest scale is TOP
    s = np.concatenate([s, np.zeros(128 - s.size % 128 if s.size % 128 else 0)]).reshape(-1, 64)
    t = torch.from_numpy(s).to(a_dtype)
    out, sf = V.process_scales(t, a_dtype)
    want_sf = 1.0 if dtype == "half" else float(2 ** np.floor(np.log2(448 / top)))
    assert sf == want_sf
    got = _s0e5m3(out.view(torch.uint8).numpy())
    perm = s.reshape(-1, 4)[:, [0, 2, 1, 3]].reshape(s.shape)  # the [0, 2, 1, 3] column order within each 4
    want = perm * sf * 128
    want[want < 2] = 0
    assert np.array_equal(got, want)


def test_process_scales_zeroes_small_and_negative_scales():
    """vLLM's departures from the checkpoint, which the reference does not follow: with the largest scale at 448
    (sf = 1) every scale below 2^-6 becomes 0, and so does a negative one."""
    s = torch.tensor([[448.0, 2.0 ** -6, 2.0 ** -7, -3.0] * 16], dtype=torch.bfloat16)
    out, sf = V.process_scales(s, torch.bfloat16)
    got = _s0e5m3(out.view(torch.uint8).numpy()).reshape(-1, 4)[0]
    assert sf == 1.0
    # column order [0, 2, 1, 3]: 448, 2^-7, 2^-6, -3
    assert list(got) == [448 * 128, 0.0, 2.0 ** -6 * 128, 0.0]


def test_process_global_scale():
    g = torch.tensor(1.5e-4, dtype=torch.float32)
    assert V.process_global_scale(g, torch.bfloat16).item() == pytest.approx(1.5e-4 * 2.0 ** 119, rel=1e-7)
    assert V.process_global_scale(g, torch.half).item() == pytest.approx(1.5e-4 * 2.0 ** 7, rel=1e-7)
    assert V.process_global_scale(g, torch.bfloat16).dtype == torch.float32


def test_scales_times_global_recover_the_block_scale_times_global():
    """The algebra the kernel relies on: S0E5M3 value * processed global = s * g * 2^126 for bf16 (the factor
    Marlin's FP4 -> bf16 conversion divides out), whatever the rescale."""
    for top in (448.0, 3.0, 0.25):
        s = torch.tensor([[top, top / 2, top / 8, 0.0] * 16], dtype=torch.bfloat16)
        out, sf = V.process_scales(s, torch.bfloat16)
        g = V.process_global_scale(torch.tensor(2e-3, dtype=torch.float32), torch.bfloat16) / sf
        v = _s0e5m3(out.view(torch.uint8).numpy()).reshape(-1, 4)[0] * float(g)
        want = np.array([top, top / 8, top / 2, 0.0]) * float(np.float32(2e-3)) * 2.0 ** 126
        assert np.allclose(v, want, rtol=1e-6), (top, v, want)


# -- the reference --------------------------------------------------------------------------------------------

def test_round_bf16_ties_to_even():
    x = np.array([1 + 2 ** -8, 1 + 3 * 2 ** -8, -(1 + 2 ** -9), 3.0], np.float32)
    assert list(V.round_bf16(x)) == [1.0, 1 + 2 ** -6, -1.0, 3.0]


def test_reference_rounds_activations_and_output_to_bf16():
    c = _case(m=5)
    ref = V.reference(c)
    xb = V.round_bf16(c.x)
    assert np.array_equal(ref, V.round_bf16(xb @ c.w.astype(np.float64).T))
    assert ref.shape == (5, 64) and not np.array_equal(xb, c.x.astype(np.float64))
