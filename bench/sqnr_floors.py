"""Weight SQNR each 4/8-bit scheme achieves, the measurement behind verify's default floors
(nvfp4tools/sqnr_floors.py). No real model weights can be fetched here, so the weights are
synthetic stand-ins for the shapes real LLM weights take: Gaussian, Laplace, Student-t(3) (heavy
tails) and Gaussian with log-normal per-row scales plus 1% outlier input channels at 8x (the
structure that makes per-channel and large-group int4 hard). "unrelated" is the SQNR of a
quantized layer against an independent matrix of the same variance: what `verify --against` sees
when the original is not the checkpoint's source. The last rows are the worst figure per scheme
and the floor ``verify --against`` applies to it (nvfp4tools/sqnr_floors.py), which sits a few dB
under that worst figure.

    .venv/bin/python bench/sqnr_floors.py
"""

from __future__ import annotations

import numpy as np

from nvfp4tools import schemes
from nvfp4tools.errstats import sqnr_db
from nvfp4tools.kernels_ref.fp8 import decode_e4m3, encode_e4m3
from nvfp4tools.kernels_ref.ggml_quants import dequantize_q4_0, dequantize_q8_0, quantize_q4_0, quantize_q8_0
from nvfp4tools.kernels_ref.int4 import quantize_int4_sym
from nvfp4tools.kernels_ref.nvfp4 import dequantize_nvfp4, quantize_nvfp4
from nvfp4tools.sqnr_floors import NOT_SOURCE_DB, sqnr_floor_db

E2M1 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6], dtype=np.float64)


def mxfp4(w: np.ndarray) -> np.ndarray:
    """OCP MX FP4: blocks of 32, E8M0 scale 2^(floor(log2 amax) - 2), E2M1 round-to-nearest."""
    g = w.reshape(-1, 32).astype(np.float64)
    amax = np.max(np.abs(g), axis=1, keepdims=True)
    scale = np.exp2(np.floor(np.log2(np.where(amax > 0, amax, 1))) - 2)
    x = np.abs(g) / scale
    idx = np.abs(x[..., None] - E2M1).argmin(-1)
    return (np.sign(g) * E2M1[idx] * scale).reshape(w.shape)


def int4(w: np.ndarray, group: int) -> np.ndarray:
    q, s = quantize_int4_sym(w, group)
    return q.astype(np.float32) * np.repeat(s.astype(np.float32), group, axis=-1)


def fp8_channel(w: np.ndarray) -> np.ndarray:
    s = np.max(np.abs(w), axis=1, keepdims=True) / 448.0
    return decode_e4m3(encode_e4m3(w / s)) * s


SCHEMES = {
    "nvfp4": lambda w: dequantize_nvfp4(quantize_nvfp4(w)),
    "mxfp4": mxfp4,
    "int4 g32": lambda w: int4(w, 32),
    "int4 g128": lambda w: int4(w, 128),
    "int4 channel": lambda w: int4(w, w.shape[-1]),
    "q4_0": lambda w: dequantize_q4_0(quantize_q4_0(w)).reshape(w.shape),
    "q8_0": lambda w: dequantize_q8_0(quantize_q8_0(w)).reshape(w.shape),
    "fp8 channel": fp8_channel,
}

# the scheme each column is, as verify sees it (for its floor)
FLOOR_OF = {
    "nvfp4": schemes.NVFP4,
    "mxfp4": schemes.MXFP4,
    "int4 g32": schemes.int_group(4, 32, True),
    "int4 g128": schemes.int_group(4, 128, True),
    "int4 channel": schemes.int_group(4, None, True),
    "q4_0": schemes.ggml("q4_0", 4.5, 32, "f16"),
    "q8_0": schemes.ggml("q8_0", 8.5, 32, "f16"),
    "fp8 channel": schemes.FP8_A16,
}


def main() -> None:
    rng = np.random.default_rng(0)
    n, k = 1024, 2048
    dists = {
        "gaussian": rng.standard_normal((n, k)),
        "laplace": rng.laplace(size=(n, k)),
        "student-t(3)": rng.standard_t(3, (n, k)),
        "row scales + 1% outlier channels": rng.standard_normal((n, k)) * np.exp(rng.standard_normal((n, 1)))
        * np.where(rng.random((1, k)) < 0.01, 8.0, 1.0),
    }
    print("| weights | " + " | ".join(SCHEMES) + " | unrelated |")
    print("|---" * (len(SCHEMES) + 2) + "|")
    worst = {s: np.inf for s in SCHEMES}
    for name, w in dists.items():
        w = (w * 0.02).astype(np.float32)
        other = (rng.standard_normal(w.shape) * w.std()).astype(np.float32)
        row = {s: sqnr_db(w, f(w)) for s, f in SCHEMES.items()}
        worst = {s: min(worst[s], v) for s, v in row.items()}
        print(f"| {name} | " + " | ".join(f"{v:.1f}" for v in row.values()) + f" | {sqnr_db(w, other):.1f} |")
    print("| **worst** | " + " | ".join(f"{v:.1f}" for v in worst.values()) + " | |")
    print("| verify's floor | " + " | ".join(f"{sqnr_floor_db(FLOOR_OF[s]):.0f}" for s in SCHEMES)
          + f" | {NOT_SOURCE_DB:.0f} (not the source) |")


if __name__ == "__main__":
    main()
