"""The ggml-cuda backend's parts that need no GPU: its unavailable reasons (true for the machine,
saying how to build the library) and the identity probes its reference reads ggml-cuda's
activations back through. On a GPU: tests/test_gpu.py."""

from __future__ import annotations

import numpy as np
import pytest

from nvfp4tools.kernels_ref import ggml_backend as G
from nvfp4tools.kernels_ref import ggml_cuda as C
from nvfp4tools.kernels_ref.ggml_quants import dequantize_blocks


@pytest.fixture
def fresh(monkeypatch):
    C._load.cache_clear()
    C._driver.cache_clear()
    yield monkeypatch
    monkeypatch.undo()
    C._load.cache_clear()
    C._driver.cache_clear()


def test_no_driver_is_the_reason_without_a_gpu(fresh):
    fresh.setattr(C, "_driver", lambda: ("no NVIDIA driver here (libcuda.so.1 cannot be loaded): ggml-cuda needs a "
                                         "CUDA GPU", None))
    assert C.available().startswith("no NVIDIA driver here")


def test_missing_library_says_how_to_build_it(fresh, tmp_path):
    fresh.setattr(C, "_driver", lambda: (None, (9, 0)))
    fresh.setattr(G, "llama_cpp_lib_dir", lambda: str(tmp_path))     # a CPU-only llama-cpp-python
    fresh.delenv(C.ENV, raising=False)
    why = C.available()
    assert why.startswith("no ggml CUDA library (NVFP4TOOLS_GGML_LIB_DIR is not set; llama-cpp-python here is a "
                          "CPU-only build)")
    assert "bash bench/build_ggml_cuda.sh" in why and "CMAKE_ARGS=-DGGML_CUDA=on" in why
    fresh.setenv(C.ENV, str(tmp_path))
    C._load.cache_clear()
    assert f"{C.ENV}={tmp_path} has no libggml-cuda" in C.available()


@pytest.mark.parametrize("k", [64, 2112])
def test_identity_probes_decode_to_the_identity(k):
    for make, name, size in ((C._q8_0_identity, "Q8_0", 34), (C._q4_0_identity, "Q4_0", 18)):
        for r0, r1 in ((0, k), (k // 2, k)):
            w = dequantize_blocks(name, make(k, r0, r1).reshape(-1, size)).reshape(r1 - r0, k)
            assert np.array_equal(w, np.eye(k, dtype=np.float32)[r0:r1]), (name, r0)
    s = C._q4_0_sum_probe(k)
    assert s.shape == (k // 32, k // 32 * 18)
    assert not np.any(dequantize_blocks("Q4_0", s.reshape(-1, 18)))     # every value 0: nibble 8
    d = s.reshape(k // 32, k // 32, 18)[..., :2].copy().view("<f2")[..., 0]
    assert np.array_equal(d, np.eye(k // 32, dtype=np.float16))


def test_row_split_puts_decode_and_prefill_on_their_kernels():
    assert C.split_rows(1) == [(0, 1)]
    assert C.split_rows(16) == [(0, 1), (1, 16)]          # M = 1: MMVQ; M = 15 > 8: MMQ


def test_check_activations_refuses_what_is_not_a_q8_quantization():
    x = np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32)
    b = x.reshape(2, -1, 32)
    d = np.abs(b).max(-1, keepdims=True) / 127
    C._check_activations(x, (np.round(b / d) * d).reshape(x.shape), "t")
    with pytest.raises(RuntimeError, match="not a Q8 quantization"):
        C._check_activations(x, (np.round(b / d) * d).reshape(x.shape) * 1.01, "t")


# -- the reference's algebra, on a numpy model of ggml-cuda's arithmetic -----------------------------------

def _roundf(v):
    return np.sign(v) * np.floor(np.abs(v) + 0.5)      # C roundf: halves away from zero


class _ModelCuda:
    """ggml-cuda's mul_mat as its sources compute it (Hopper): MMVQ for <= 8 rows (quantize_q8_1: d =
    amax/127, q = roundf(x/d), d and s = sum(x) as fp16; Q4_0's dot d_w (d sum(nib q) - 8 s)), MMQ above
    (quantize_mmq_q8_1: q = roundf(x * 127/amax), d = 1/(127/amax), fp16 for Q4_0's DS4 layout)."""

    cc = (9, 0)

    def type_problem(self, name, k, rows):
        return None

    def mul_mats(self, weights, xs, pairs):
        from nvfp4tools.formats._ggml_types import BY_NAME

        out = []
        for i, j in pairs:
            name, raw = weights[i]
            x = np.asarray(xs[j], np.float32)
            block, size = BY_NAME[name]
            k = raw.shape[1] // size * block
            w = dequantize_blocks(name, raw.reshape(-1, size)).reshape(raw.shape[0], k).astype(np.float64)
            b = x.reshape(x.shape[0], -1, 32)
            amax = np.max(np.abs(b), axis=-1, keepdims=True)
            if x.shape[0] <= C.MMVQ_MAX_ROWS:
                d = (amax / np.float32(127)).astype(np.float32)
                q = _roundf(b / d)
                dx = d.astype(np.float16).astype(np.float64)
            else:
                inv = (np.float32(127) / amax).astype(np.float32)
                q = _roundf(b * inv)
                dx = (np.float32(1) / inv).astype(np.float32).astype(np.float64)
                if name == "Q4_0":
                    dx = dx.astype(np.float16).astype(np.float64)
            y = (q * dx).reshape(x.shape) @ w.T
            if name == "Q4_0" and x.shape[0] <= C.MMVQ_MAX_ROWS:
                s = b.sum(axis=-1).astype(np.float16).astype(np.float64)          # [M, K/32]
                d4 = raw.reshape(raw.shape[0], -1, 18)[..., :2].copy().view("<f2")[..., 0].astype(np.float64)
                y = y + 8 * ((dx[..., 0] * q.sum(axis=-1)) - s) @ d4.T           # d4 (8 d sum(q) - 8 s)
            out.append(y.astype(np.float32))
        return out


@pytest.mark.parametrize("name", ["Q4_0", "Q8_0", "NVFP4"])
def test_reference_algebra_on_a_model_of_ggml_cuda(monkeypatch, name):
    """With ggml-cuda replaced by a numpy model of its arithmetic, the reference (identity probes,
    the Q4_0 offset probe) equals the model's output to float32 rounding, for MMVQ and MMQ rows;
    the CPU mirror of ggml-cpu's quantizer does not (ggml-cuda quantizes differently)."""
    from nvfp4tools.kernels_ref.dispatch import LayerCase
    from nvfp4tools.kernels_ref.ggml_quants import quantize_q4_0, quantize_q8_0
    from nvfp4tools.kernels_ref.nvfp4 import dequantize_nvfp4, quantize_nvfp4
    from nvfp4tools.kernels_ref.fp4 import unpack_nibbles_hf

    monkeypatch.setattr(C, "library", lambda: _ModelCuda())
    rng = np.random.default_rng(4)
    n, k = 48, 256
    wf = rng.standard_normal((n, k)).astype(np.float32)
    scale = 1.0
    if name == "NVFP4":
        q = quantize_nvfp4(wf)
        raw = G.nvfp4_blocks(unpack_nibbles_hf(q.packed), q.block_scale)
        scale = float(q.global_scale)
        w = dequantize_nvfp4(q)
    else:
        raw = (quantize_q4_0 if name == "Q4_0" else quantize_q8_0)(wf).reshape(n, -1)
        w = dequantize_blocks(name, raw.reshape(-1, raw.shape[1] // (k // 32))).reshape(n, k)
    x = rng.standard_normal((16, k)).astype(np.float32)
    case = LayerCase("l", x, w, ggml_type=name, ggml_bytes=raw, ggml_out_scale=scale)
    y, ref = C.run(case).astype(np.float64), C.reference(case)
    assert np.linalg.norm(y - ref) / np.linalg.norm(ref) < 1e-6
    cpu = G.activations_as_ggml(x, "Q8_0").astype(np.float64) @ np.asarray(w, np.float64).T
    assert np.linalg.norm(y - cpu) / np.linalg.norm(cpu) > 1e-5
