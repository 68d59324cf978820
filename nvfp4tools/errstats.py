"""Error statistics between a reference array and an approximation, shared by ``convert``'s
requantization report and ``verify``: one definition of SQNR and relative error.

SQNR (dB) = 10 log10(sum ref^2 / sum (ref - approx)^2), in float64; +inf when the two are equal,
-inf when the reference is all zero and the approximation is not.
"""

from __future__ import annotations

import math

import numpy as np


def rel_err(approx: np.ndarray, ref: np.ndarray) -> float:
    """||approx - ref|| / ||ref|| (0 when both are zero, inf when only ref is)."""
    den = float(np.linalg.norm(np.asarray(ref, np.float64)))
    num = float(np.linalg.norm(np.asarray(approx, np.float64) - np.asarray(ref, np.float64)))
    if not math.isfinite(num):
        return float("inf")
    return num / den if den else (0.0 if num == 0 else float("inf"))


def sqnr_db(ref: np.ndarray, approx: np.ndarray) -> float:
    r = np.asarray(ref, np.float64)
    sig = float(np.sum(r ** 2))
    noise = float(np.sum((r - np.asarray(approx, np.float64)) ** 2))
    if noise == 0:
        return float("inf")
    return 10 * math.log10(sig / noise) if sig else float("-inf")


def _json_float(v: float) -> float | None:
    return v if math.isfinite(v) else None


def error_report(name: str, ref: np.ndarray, approx: np.ndarray, **extra) -> dict:
    """One tensor's row of a requantization report (JSON-safe: non-finite values are null)."""
    r = np.asarray(ref, np.float64)
    err = np.asarray(approx, np.float64) - r
    return {"tensor": name, **extra,
            "max_abs_err": _json_float(float(np.max(np.abs(err)))) if err.size else 0.0,
            "rel_rms_err": _json_float(rel_err(approx, ref)),
            "sqnr_db": _json_float(sqnr_db(ref, approx))}
