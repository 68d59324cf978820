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
