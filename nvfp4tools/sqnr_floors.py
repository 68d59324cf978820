"""The weight SQNR below which ``verify --against`` fails a layer, per quantization scheme.

A quantized layer compared with its own unquantized source reaches a weight SQNR set by the
scheme, not by the model; compared with an unrelated matrix of the same variance it reaches
-3 dB. The floors sit a few dB under the worst figure each scheme reached in
``bench/sqnr_floors.py`` (synthetic Gaussian, Laplace, Student-t(3) and outlier-channel weights:
the measurement and its caveats are in bench/RESULTS.md), so a real checkpoint passes and a wrong
original, a broken requantization or a layer written from another model fails. Below
:data:`NOT_SOURCE_DB` the report says the original is not this checkpoint's source.

    scheme                      worst measured   floor
    nvfp4 (E2M1, 16, E4M3)            20.4 dB     15 dB
    mxfp4 (E2M1, 32, E8M0)            16.9 dB     12 dB
    int4, groups <= 32                16.8 dB     12 dB
    int4, groups of 64-128            12.4 dB      8 dB
    int4, per channel                  5.7 dB      3 dB
    GGML 4-6 bit (q4_0, k-quants)     17.7 dB     12 dB   (q4_0 measured; more bits do better)
    GGML 8 bit (q8_0)                 41.4 dB     30 dB
    fp8 / int8 per channel            31.6 dB     25 dB   (int8 not measured: finer than fp8)
"""

from __future__ import annotations

from .model import QuantScheme

NOT_SOURCE_DB = 0.0  # unrelated weights: -3 dB; the worst real scheme above: 5.7 dB


def sqnr_floor_db(scheme: QuantScheme) -> float:
    """The default floor for a layer quantized with SCHEME (see the table above)."""
    if scheme.element == "e2m1":
        return 15.0 if scheme.block_scale == "e4m3" and scheme.block_size == 16 else 12.0
    if scheme.element == "int4":
        if scheme.block_size is None:
            return 3.0
        return 12.0 if scheme.block_size <= 32 else 8.0
    if scheme.element == "ggml":
        return 30.0 if scheme.bits >= 8 else 12.0
    if scheme.bits >= 8:
        return 25.0
    return 3.0  # any other sub-8-bit scheme: only the "not the source" separation is claimed
