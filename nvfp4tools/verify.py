"""``verify``: decode every quantized linear, check its codes and scales are well formed, run the
reference GEMM on seeded random activations at the layer's real shape, and compare independent
paths and backends against the float64 reference.

Per layer:
* ``path_rel_err``: the canonical path (reader -> canonical parts -> ``kernels_ref`` dequantize,
  float32) against an independent implementation of the format's own dequantization formula
  (field-arithmetic E2M1/E4M3 decode in float64, the stored global applied as the format stores
  it: multiplied for ModelOpt, divided for compressed-tensors). Tolerance 1e-6: the two differ
  only by float32 rounding of the final product. GGUF block types (Q4_0 ... K-quants, IQ, MXFP4,
  NVFP4): path A is ``kernels_ref.ggml_quants`` (numpy, from ggml's ``dequantize_row_*``), path B
  gguf-py's ``quants.dequantize``; the two are bit-identical, so only the float64 GEMM differs.
* stacked experts ([E, out, in]: GGUF, fused safetensors) are verified expert by expert (rows
  carry ``expert``), the units ``--sample`` draws from.
* per backend ``rel_err`` = ``||y - y_ref|| / ||y_ref||`` with ``y_ref = x @ W^T`` in float64, and
  ``max_abs_err``; held to the backend's stated tolerance; NaN/inf never passes. A backend that
  converts the activations itself (``ggml-cpu``: to Q8) is held to its own ``reference``; one that
  cannot compute a layer (no lossless ggml type) skips it, listed in ``backends_skipped``.
* ``w4a4_rel_err`` (when the layer has a static input scale): activations quantized to NVFP4 the
  Blackwell way, against W4A16: what W4A4 serving adds (information, not a verdict).
* with ``against``: ``weight_sqnr_db`` and ``output_rel_err`` of the quantized layer against the
  unquantized original.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._version import __version__
from .errors import UsageError
from .errstats import rel_err as _rel, sqnr_db as _sqnr_db
from .model import Checkpoint, TensorInfo

SCHEMA = "nvfp4tools/verify/v2"
PATH_TOLERANCE = 1e-6


def _e2m1_arith(codes: np.ndarray) -> np.ndarray:
    """E2M1 value by field arithmetic (OCP MX 5.3.3): not the lookup table of path A."""
    c = codes.astype(np.int64)
    e = (c >> 1) & 3
    m = (c & 1).astype(np.float64)
    mag = np.where(e == 0, m * 0.5, (1.0 + m * 0.5) * np.exp2(e - 1.0))
    return np.where(c & 8, -mag, mag)


def format_formula(ckpt: Checkpoint, t: TensorInfo) -> np.ndarray | None:
    """The format's own dequantization formula, implemented independently (float64)."""
    from nvfp4tools.kernels_ref.fp8 import decode_e4m3_bits
    from nvfp4tools.tensors import GGML_BLOCK_TYPES, load_part, scalar_part

    data = t.part("data")
    if data is not None and data.stored_dtype in GGML_BLOCK_TYPES:
        return _ggml_formula(ckpt, t)
    if t.scheme.name == "nvfp4":
        data, bs, g = t.part("data"), t.part("block_scale"), t.part("global_scale")
        if data is None or bs is None or g is None or data.stored_dtype != "U8":
            return None
        raw = np.asarray(load_part(ckpt.root, data)).astype(np.int64)
        lo, hi = raw % 16, raw // 16
        codes = np.stack([lo, hi], axis=-1).reshape(t.shape)
        vals = _e2m1_arith(codes)
        scale = decode_e4m3_bits(np.asarray(load_part(ckpt.root, bs)))
        stored = scalar_part(ckpt.root, g).astype(np.float64)
        w = vals.reshape(t.shape[:-1] + (-1, 16)) * scale[..., None]
        w = w.reshape(t.shape)
        glob = stored.reshape((-1,) + (1,) * (len(t.shape) - 1)) if stored.size > 1 else stored.reshape(())
        # ModelOpt: w = E2M1 * e4m3 * weight_scale_2 ; compressed-tensors: w = E2M1 * e4m3 / weight_global_scale
        return w / glob if g.stored_as == "divisor" else w * glob
    if t.scheme.element == "int4" and t.part("data").stored_dtype == "I32":
        data = t.part("data")
        words = np.ascontiguousarray(load_part(ckpt.root, data)).astype("<i4")
        b = words.view(np.uint8).reshape(words.shape + (4,)).astype(np.int64)  # little-endian bytes
        q = np.stack([b % 16, b // 16], axis=-1).reshape(words.shape[:-1] + (-1,))[..., : t.shape[-1]] - 8
        scale = np.asarray(load_part(ckpt.root, t.part("block_scale")), dtype=np.float64)
        if t.part("zero_point") is not None or t.part("g_idx") is not None:
            return None
        group = t.shape[-1] // scale.shape[-1]
        return q * np.repeat(scale, group, axis=-1)
    return None


def _ggml_formula(ckpt: Checkpoint, t: TensorInfo) -> np.ndarray | None:
    """GGUF block types: gguf-py's ``quants.dequantize`` (llama.cpp's own Python codecs, tested by
    llama.cpp bit for bit against libggml) in place of path A's ``kernels_ref.ggml_quants``; an NVFP4
    ``.scale`` sidecar applied after the blocks, as llama.cpp applies it. None where gguf-py has
    no codec for the type."""
    from gguf import GGMLQuantizationType, quants

    from nvfp4tools.tensors import load_part, scalar_part

    data = t.part("data")
    qtype = getattr(GGMLQuantizationType, data.stored_dtype, None)
    if qtype is None:
        return None
    raw = np.asarray(load_part(ckpt.root, data)).reshape(-1, data.nbytes // (t.n_elements // t.shape[-1]))
    try:
        with np.errstate(invalid="ignore", over="ignore"):
            w = quants.dequantize(raw, qtype).astype(np.float64).reshape(t.shape)
    except NotImplementedError:
        return None
    g = scalar_part(ckpt.root, t.part("global_scale"))
    if g is not None:
        w = w * (g.astype(np.float64).reshape((-1,) + (1,) * (len(t.shape) - 1)) if g.size > 1 else float(g[0]))
    return w


def _ggml_scale_problems(ckpt: Checkpoint, t: TensorInfo) -> list[str]:
    """Non-finite or invalid scales stored inside GGUF blocks (formats._ggml_types.BLOCK_SCALES)."""
    from nvfp4tools.formats._ggml_types import BLOCK_SCALES, BY_NAME
    from nvfp4tools.tensors import load_part

    data = t.part("data")
    fields = BLOCK_SCALES.get(data.stored_dtype, ())
    if not fields or not data.nbytes:
        return []
    blocks = np.asarray(load_part(ckpt.root, data)).reshape(-1, BY_NAME[data.stored_dtype][1])
    problems = []
    for f in fields:
        raw = blocks[:, f.offset:f.offset + f.count * (2 if f.kind == "f16" else 1)]
        if f.kind == "f16":
            n = int(np.count_nonzero(~np.isfinite(np.ascontiguousarray(raw).view("<f2"))))
            what = f"non-finite fp16 block scales ({'d' if f.role == 'd' else 'minimums'})"
        elif f.kind == "ue4m3":
            n = int(np.count_nonzero(raw == 0x7F))
            what = "UE4M3 block scales 0x7F (NaN in E4M3; ggml decodes them as 0)"
        else:
            n = int(np.count_nonzero(raw == 0xFF))
            what = "E8M0 block scales 0xFF (NaN in OCP MX; ggml decodes them as 2^127)"
        if n:
            problems.append(f"{n} {what}")
    return problems


def well_formed(ckpt: Checkpoint, t: TensorInfo) -> list[str]:
    """Problems with the stored codes/scales that make the layer wrong whatever the kernel."""
    from nvfp4tools.tensors import load_part, scalar_part

    problems: list[str] = _ggml_scale_problems(ckpt, t) if _is_ggml(t) else []
    bs = t.part("block_scale")
    if bs is not None and bs.stored_dtype == "F8_E4M3":
        b = np.asarray(load_part(ckpt.root, bs))
        n_nan = int(np.count_nonzero((b & 0x7F) == 0x7F))
        n_neg = int(np.count_nonzero(b > 0x80))
        if n_nan:
            problems.append(f"{n_nan} NaN E4M3 block scales")
        if n_neg:
            problems.append(f"{n_neg} negative E4M3 block scales")
    elif bs is not None and bs.stored_dtype in ("F16", "BF16", "F32"):
        s = np.asarray(load_part(ckpt.root, bs), dtype=np.float32)
        if not np.all(np.isfinite(s)):
            problems.append(f"{int(np.count_nonzero(~np.isfinite(s)))} non-finite group scales")
    for role, label in (("global_scale", "global scale"), ("input_scale", "input scale")):
        p = t.part(role)
        if p is None:
            continue
        v = scalar_part(ckpt.root, p)
        bad = v[~np.isfinite(v) | (v <= 0)]
        if bad.size:
            problems.append(f"{label} {float(bad[0])!r} (stored {p.key}) is not finite and positive")
    return problems


def _is_ggml(t: TensorInfo) -> bool:
    from nvfp4tools.tensors import GGML_BLOCK_TYPES

    data = t.part("data")
    return data is not None and data.stored_dtype in GGML_BLOCK_TYPES


def degenerate(w: np.ndarray) -> list[str]:
    """A layer that decodes to all zeros or to one value everywhere computes nothing useful,
    whatever the kernel: codes or block scales zeroed by a broken export or a bad merge."""
    if w.size == 0:
        return []
    if not np.any(w):
        return ["degenerate: every weight decodes to 0 (all-zero codes or block scales)"]
    lo, hi = float(np.min(w)), float(np.max(w))
    if lo == hi:
        return [f"degenerate: every weight decodes to the same value {lo:.6g} (constant codes)"]
    return []


@dataclass(frozen=True)
class Limits:
    """What ``--against`` holds each layer to: a weight-SQNR floor and an output-error ceiling, by
    role ("*" for every role). Absent floors come from :func:`~nvfp4tools.sqnr_floors.sqnr_floor_db`."""

    min_sqnr_db: dict[str, float] = field(default_factory=dict)
    max_output_rel_err: dict[str, float] = field(default_factory=dict)

    def floor(self, t: TensorInfo) -> float:
        from .sqnr_floors import sqnr_floor_db

        v = self.min_sqnr_db.get(t.role, self.min_sqnr_db.get("*"))
        return sqnr_floor_db(t.scheme) if v is None else v

    def ceiling(self, t: TensorInfo) -> float | None:
        return self.max_output_rel_err.get(t.role, self.max_output_rel_err.get("*"))


def verify_units(ckpt: Checkpoint) -> list[TensorInfo]:
    """The quantized linears verify checks. A stacked [E, out, in] expert tensor (GGUF, fused
    safetensors) counts as its E experts, each reading its own bytes: a sample of a stacked
    checkpoint is drawn over the same units as one stored expert by expert, and no layer needs
    the whole stack (a full-size 26B GGUF's is 128 x 704 x 2816) decoded at once."""
    from nvfp4tools.tensors import expert_slice

    units: list[TensorInfo] = []
    for t in ckpt.tensors.values():
        if not (t.scheme.quantized and len(t.shape) >= 2):
            continue
        slices = [expert_slice(t, e) for e in range(t.n_experts_fused or 0)] if len(t.shape) == 3 else []
        if slices and all(x is not None for x in slices):
            units.extend(slices)  # type: ignore[arg-type]
        else:
            units.append(t)
    return units


def verify(ckpt: Checkpoint, *, backends: list, sample: int | None = None, tokens: int = 16, seed: int = 0,
           against: Checkpoint | None = None, w4a4: bool = True, limits: Limits | None = None,
           unavailable: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Verify SAMPLE (or every) quantized linear with BACKENDS; UNAVAILABLE lists backends that were
    asked for (``--backend all``) but cannot run here, {"name", "reason"}: reported, not run."""
    from nvfp4tools.kernels_ref.dispatch import LayerCase, NotRunnable
    from nvfp4tools.kernels_ref.gemm import gemm_reference, quantize_activations_nvfp4
    from nvfp4tools.tensors import canonical_nvfp4, dequantize

    from .matching import Original, row_order_between

    if tokens < 1:
        raise UsageError("--tokens must be at least 1")
    limits = limits or Limits()
    layers = verify_units(ckpt)
    if not layers:
        raise UsageError(f"{ckpt.source}: no quantized linear layer to verify")
    rng = np.random.default_rng(seed)
    if sample is not None and sample < len(layers):
        idx = sorted(rng.choice(len(layers), size=sample, replace=False))
        layers = [layers[i] for i in idx]
    orig = Original(against, row_order_between(ckpt, against)) if against is not None else None
    ran: dict[str, int] = {b.name: 0 for b in backends}
    skipped: dict[str, dict[str, int]] = {b.name: {} for b in backends}   # backend -> reason -> layers
    rows: list[dict[str, Any]] = []
    for t in layers:
        row: dict[str, Any] = {"name": t.name, "role": t.role, "layer": t.layer, "expert": t.expert,
                               "shape": list(t.shape), "scheme": t.scheme.name}
        problems = well_formed(ckpt, t)
        w = dequantize(ckpt, t).reshape(-1, t.shape[-1])
        problems += degenerate(w)
        intrinsic = list(problems)   # the stored numbers themselves are wrong (not a comparison)
        k = t.shape[-1]
        x = rng.standard_normal((tokens, k)).astype(np.float32)
        y_ref = gemm_reference(x, w)
        formula = format_formula(ckpt, t)
        row["path_rel_err"] = None if formula is None else _rel(gemm_reference(x, formula.reshape(-1, k)), y_ref)
        row["path_tolerance"] = PATH_TOLERANCE
        case_kw: dict[str, Any] = {}
        input_scale = None
        if t.scheme.name == "nvfp4" and len(t.shape) == 2:
            c = canonical_nvfp4(ckpt, t)
            input_scale = float(c.input_scale[0]) if c.input_scale is not None and c.input_scale.size else None
            case_kw = dict(codes=c.codes, scale_bytes=c.scale_bytes, global_scale=float(c.global_scale.reshape(-1)[0]),
                           input_scale=input_scale)
        if any(getattr(b, "ggml_weight", False) for b in backends):
            case_kw = dict(case_kw, **ggml_weight(ckpt, t, case_kw))
        results, skipped_here = [], []
        for b in backends:
            ref = y_ref
            kw = case_kw
            if getattr(b, "activations", "w4a16") == "w4a4":
                if case_kw.get("codes") is None:
                    continue  # a W4A4 kernel needs NVFP4 weights
                # a W4A16 layer has no static input scale: emulate with 1.0, the reference too
                kw = dict(case_kw, input_scale=case_kw.get("input_scale") or 1.0)
                ref = gemm_reference(quantize_activations_nvfp4(x, kw["input_scale"]), w)
            case = LayerCase(t.name, x, w, **kw)
            try:
                if getattr(b, "reference", None) is not None:
                    # the backend converts the activations itself (ggml: to Q8); its reference does the same
                    ref = b.reference(case)
                y = np.asarray(b.run(case), dtype=np.float64)
            except NotRunnable as e:
                skipped[b.name][str(e)] = skipped[b.name].get(str(e), 0) + 1
                skipped_here.append({"backend": b.name, "reason": str(e)})
                continue
            ran[b.name] += 1
            finite = bool(np.all(np.isfinite(y))) and y.shape == ref.shape
            err = _rel(y, ref) if finite else float("inf")
            max_abs = float(np.max(np.abs(y - ref))) if finite else float("inf")
            results.append({"backend": b.name, "rel_err": err, "max_abs_err": max_abs, "tolerance_rel": b.tolerance_rel,
                            "pass": finite and err <= b.tolerance_rel})
        row["backends"] = results
        if skipped_here:
            row["backends_skipped"] = skipped_here
        if w4a4 and input_scale is not None and math.isfinite(input_scale) and input_scale > 0:
            row["w4a4_rel_err"] = _rel(gemm_reference(quantize_activations_nvfp4(x, input_scale), w), y_ref)
        against_ok = True
        if orig is not None:
            wo, why = orig.weight(t)
            if wo is None:
                row["against"] = None
                row["unmatched"] = why
            else:
                wo = np.asarray(wo).reshape(-1, k)
                sqnr = _sqnr_db(wo, w)
                out_err = _rel(y_ref, gemm_reference(x, wo))
                floor, ceiling = limits.floor(t), limits.ceiling(t)
                against_ok = sqnr >= floor and (ceiling is None or out_err <= ceiling)
                if sqnr < floor:
                    problems.append(f"weight SQNR {sqnr:.2f} dB against the original is below the floor {floor:g} dB")
                if ceiling is not None and out_err > ceiling:
                    problems.append(f"output error {out_err:.3g} against the original is above the ceiling {ceiling:g}")
                row["against"] = {"weight_sqnr_db": sqnr, "output_rel_err": out_err, "min_weight_sqnr_db": floor,
                                  "max_output_rel_err": ceiling, "pass": against_ok}
        row["problems"] = problems
        failed = [name for name, bad in (
            ("well_formed", bool(intrinsic)),
            ("path", row["path_rel_err"] is not None and not row["path_rel_err"] <= PATH_TOLERANCE),
            ("backend", not all(r["pass"] for r in results)),
            ("against", not against_ok)) if bad]
        row["failed_checks"] = failed
        row["verdict"] = "fail" if failed else "pass"
        rows.append(row)
    states = [_state(b, ran[b.name], skipped[b.name]) for b in backends] + [
        {"name": u["name"], "state": "unavailable", "reason": u["reason"], "n_layers": 0} for u in unavailable or ()]
    return _report(ckpt, rows, backends, states, tokens, seed, sample, against)


def _state(b, n_layers: int, skipped: dict[str, int] | None = None) -> dict[str, Any]:
    skipped = skipped or {}
    extra: dict[str, Any] = {}
    if skipped:
        # layers the backend could not compute, by reason (each layer row lists its own in backends_skipped)
        extra = {"n_skipped": sum(skipped.values()),
                 "skipped": [{"reason": r, "n_layers": n} for r, n in sorted(skipped.items(), key=lambda kv: -kv[1])]}
    if n_layers:
        why = None
        if skipped:
            why = f"skipped {extra['n_skipped']} layers: " + "; ".join(
                f"{s['reason']} ({s['n_layers']})" for s in extra["skipped"][:3])
        return {"name": b.name, "state": "ran", "reason": why, "n_layers": n_layers,
                "tolerance_rel": b.tolerance_rel, "description": b.description, **extra}
    reason = extra["skipped"][0]["reason"] if skipped else \
        "no verified layer has the NVFP4 weights its W4A4 kernel needs"
    return {"name": b.name, "state": "not_applicable", "n_layers": 0, "tolerance_rel": b.tolerance_rel,
            "description": b.description, "reason": reason, **extra}


def ggml_weight(ckpt: Checkpoint, t: TensorInfo, case_kw: dict[str, Any]) -> dict[str, Any]:
    """The layer's weight in a ggml block type, without loss, as LayerCase fields (``ggml_type``,
    ``ggml_bytes`` [rows, row bytes], ``ggml_out_scale``), or ``ggml_missing`` saying why there is none:
    GGUF block tensors as stored (an NVFP4 ``.scale`` as the output multiplier, as llama.cpp applies
    it); NVFP4 repacked to ``block_nvfp4`` with its global as the multiplier; compressed-tensors
    int4 / int8 group-symmetric as Q4_0 / Q8_0 where the group scales are fp16 values."""
    from nvfp4tools.kernels_ref.dispatch import NotRunnable
    from nvfp4tools.kernels_ref.ggml_backend import int_sym_blocks, nvfp4_blocks
    from nvfp4tools.tensors import load_part, scalar_part

    data = t.part("data")
    rows = int(np.prod(t.shape[:-1]))
    try:
        if _is_ggml(t):
            if data.transposed:
                raise NotRunnable(f"{data.stored_dtype} tensor stored transposed")
            g = scalar_part(ckpt.root, t.part("global_scale"))
            if g is not None and g.size != 1:
                raise NotRunnable(f"{g.size} per-expert '.scale' values on a stack verified as one tensor")
            raw = np.asarray(load_part(ckpt.root, data)).reshape(rows, -1)
            return {"ggml_type": data.stored_dtype, "ggml_bytes": raw,
                    "ggml_out_scale": 1.0 if g is None else float(g[0])}
        if case_kw.get("codes") is not None:
            return {"ggml_type": "NVFP4", "ggml_bytes": nvfp4_blocks(case_kw["codes"], case_kw["scale_bytes"]),
                    "ggml_out_scale": case_kw["global_scale"]}
        bs = t.part("block_scale")
        if (data is not None and bs is not None and len(t.shape) == 2 and t.scheme.symmetric
                and t.part("zero_point") is None and t.part("g_idx") is None):
            scales = np.asarray(load_part(ckpt.root, bs), dtype=np.float32).reshape(t.shape[0], -1)
            if t.scheme.element == "int4" and data.stored_dtype == "I32":
                from nvfp4tools.kernels_ref.int4 import unpack_int32_to_int4
                q = unpack_int32_to_int4(np.asarray(load_part(ckpt.root, data)), t.shape[-1])
                name, raw = int_sym_blocks(q, scales, 4)
                return {"ggml_type": name, "ggml_bytes": raw}
            if t.scheme.element == "int8" and data.stored_dtype == "I8":
                name, raw = int_sym_blocks(np.asarray(load_part(ckpt.root, data)), scales, 8)
                return {"ggml_type": name, "ggml_bytes": raw}
        raise NotRunnable(f"no ggml block type holds scheme {t.scheme.name} "
                          f"({data.stored_dtype if data is not None else 'no data'}) exactly")
    except NotRunnable as e:
        return {"ggml_missing": str(e)}


def _finite(v: float) -> float | None:
    return v if v is not None and math.isfinite(v) else None


def _against_summary(rows: list[dict[str, Any]], against: Checkpoint) -> dict[str, Any]:
    from .sqnr_floors import NOT_SOURCE_DB

    matched = [r for r in rows if r.get("against")]
    unmatched = [{"name": r["name"], "reason": r["unmatched"]} for r in rows if "unmatched" in r]
    out: dict[str, Any] = {"source": against.source, "n_matched": len(matched), "n_unmatched": len(unmatched),
                           "unmatched": unmatched, "n_below_limits": sum(not r["against"]["pass"] for r in matched),
                           "median_weight_sqnr_db": None, "not_source": False, "message": None}
    if not matched:
        out["not_source"] = True
        out["message"] = (f"no quantized layer has a counterpart in {against.source}: it is not this checkpoint's "
                          f"unquantized original ({unmatched[0]['reason'] if unmatched else 'no layer'})")
        return out
    med = float(np.median([r["against"]["weight_sqnr_db"] for r in matched]))
    out["median_weight_sqnr_db"] = round(med, 3) if math.isfinite(med) else None
    if med < NOT_SOURCE_DB:
        out["not_source"] = True
        out["message"] = (f"median weight SQNR {med:.1f} dB: {against.source} is not this checkpoint's source "
                          "(quantizing a model's own weights gives 5-20 dB and more; unrelated weights of equal "
                          "variance give -3 dB)")
    elif out["n_below_limits"]:
        out["message"] = (f"{out['n_below_limits']} of {len(matched)} layers are below their SQNR floor or above "
                          "their output-error ceiling against the original")
    return out


def _report(ckpt, rows, backends, states, tokens, seed, sample, against) -> dict[str, Any]:
    by_role: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_role.setdefault(r["role"], []).append(r)
    roles = []
    for role, rs in by_role.items():
        entry: dict[str, Any] = {"role": role, "n_layers": len(rs), "n_failed": sum(r["verdict"] == "fail" for r in rs)}
        ag = [r["against"] for r in rs if r.get("against")]
        if ag:
            finite = [a["weight_sqnr_db"] for a in ag if math.isfinite(a["weight_sqnr_db"])]
            entry["mean_weight_sqnr_db"] = round(sum(finite) / len(finite), 3) if finite else None
            entry["min_weight_sqnr_db"] = round(min(a["weight_sqnr_db"] for a in ag), 3) if finite else None
            entry["mean_output_rel_err"] = sum(a["output_rel_err"] for a in ag) / len(ag)
            entry["max_output_rel_err"] = max(a["output_rel_err"] for a in ag)
            entry["sqnr_floor_db"] = min(a["min_weight_sqnr_db"] for a in ag)
        roles.append(entry)
    worst = sorted((r for r in rows if r.get("against")), key=lambda r: -r["against"]["output_rel_err"])[:10]
    ag_summary = _against_summary(rows, against) if against is not None else None
    # JSON has no NaN/inf: non-finite errors become null (and the row fails)
    for r in rows:
        for b in r["backends"]:
            b["rel_err"], b["max_abs_err"] = _finite(b["rel_err"]), _finite(b["max_abs_err"])
        for key in ("path_rel_err", "w4a4_rel_err"):
            if r.get(key) is not None:
                r[key] = _finite(r[key])
        if r.get("against"):
            r["against"] = {k: (_finite(v) if isinstance(v, float) else v) for k, v in r["against"].items()}
    for e in roles:
        for k in ("mean_output_rel_err", "max_output_rel_err"):
            if k in e:
                e[k] = _finite(e[k])
    failed = any(r["verdict"] == "fail" for r in rows) or bool(ag_summary and ag_summary["n_matched"] == 0)
    return {
        "schema": SCHEMA, "tool_version": __version__, "source": ckpt.source, "format": ckpt.format,
        "against": against.source if against is not None else None,
        "settings": {"tokens": tokens, "seed": seed, "sample": sample,
                     "backends": [b.name for b in backends], "path_tolerance": PATH_TOLERANCE},
        "backends": states,
        "summary": {"n_layers": len(rows), "n_failed": sum(r["verdict"] == "fail" for r in rows), "by_role": roles,
                    "worst": [{"name": r["name"], "role": r["role"], **r["against"]} for r in worst],
                    "against": ag_summary},
        "verdict": "fail" if failed else "pass",
        "layers": rows,
    }
