"""``check``: every requirement of a policy evaluated on one checkpoint, each with the value
measured and the limit it was held to. Composes what ``inspect``, ``estimate`` and ``verify``
already compute; nothing here measures anything itself.

A requirement is ``pass``, ``fail`` or ``unchecked`` (it could not be evaluated here: a Hub id's
weights are not downloaded, a backend cannot run on this machine and the policy allows that).
Unchecked requirements are listed with the reason and fail the gate only with
``fail-on-unchecked = true``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from nvfp4tools._version import __version__
from nvfp4tools.errors import Nvfp4ToolsError, UsageError
from nvfp4tools.model import Checkpoint

from .policy import Policy, PolicyError, Target

SCHEMA = "nvfp4tools/check/v1"
GiB = 2**30


@dataclass(frozen=True)
class Requirement:
    id: str                      # stable: "findings", "quantization.role.experts", "target.l40s.fits", ...
    group: str                   # findings | claims | quantization | target:NAME | numerics
    title: str
    status: str                  # pass | fail | unchecked
    measured: Any = None
    limit: Any = None
    detail: str = ""


def _req(id: str, group: str, title: str, ok: bool | None, measured: Any = None, limit: Any = None,
         detail: str = "") -> Requirement:
    status = "unchecked" if ok is None else ("pass" if ok else "fail")
    return Requirement(id, group, title, status, measured, limit, detail)


# -- findings and the checkpoint's own claims ------------------------------------------------

def _findings(ckpt: Checkpoint, inspect_report: dict[str, Any], p: Policy, remote: bool) -> list[Requirement]:
    claim_codes = {f.code for f in ckpt.findings}
    failing: dict[str, list[str]] = {"claims": [], "findings": []}
    for f in inspect_report["findings"]:
        code = f["code"]
        if code in p.ignore:
            continue
        sev = p.severity.get(code, f["severity"])
        if sev == "error" or code in p.fail_on:
            failing["claims" if code in claim_codes else "findings"].append(f"{code}: {f['message']}")
    out = [
        _req("claims", "claims", "the checkpoint's own claims hold (its quantization config matches its tensors)",
             not failing["claims"], len(failing["claims"]), 0, "; ".join(failing["claims"])[:500]),
        _req("findings", "findings", "no finding of severity error"
             + (f" or in fail-on ({', '.join(p.fail_on)})" if p.fail_on else ""),
             not failing["findings"], len(failing["findings"]), 0, "; ".join(failing["findings"])[:500]),
    ]
    if remote:
        out.append(_req("findings.scale-values", "findings", "per-tensor scale values are finite and positive", None,
                        detail="read from the Hub: headers only, scale values not downloaded"))
        if p.deep:
            out.append(_req("findings.deep", "findings", "no degenerate layer, no NaN/negative block scale (deep)",
                            None, detail="read from the Hub: headers only, block scales and codes not downloaded"))
    return out


# -- quantization coverage -------------------------------------------------------------------

def scheme_matches(spec: str, scheme) -> bool:
    """Policy scheme names: a scheme name ("nvfp4", "q4_0", "bf16"), a family prefix ("int4" for
    int4-g128-sym), "quantized" or "unquantized"."""
    spec = spec.lower()
    if spec == "quantized":
        return scheme.quantized
    if spec == "unquantized":
        return not scheme.quantized
    return scheme.name == spec or scheme.name.startswith(spec + "-")


def _quantization(ckpt: Checkpoint, inspect_report: dict[str, Any], p: Policy) -> list[Requirement]:
    out = []
    for role, specs in p.roles.items():
        ts = [t for t in ckpt.tensors.values() if t.role == role and len(t.shape) >= 2]
        title = f"{role} stored as {' or '.join(specs)}"
        if not ts:
            out.append(_req(f"quantization.role.{role}", "quantization", title, False, f"no {role} tensors",
                            " or ".join(specs)))
            continue
        by: dict[str, int] = {}
        for t in ts:
            by[t.scheme.name] = by.get(t.scheme.name, 0) + t.n_elements
        total = sum(by.values())
        measured = ", ".join(f"{k} {100 * v / total:.1f}%" for k, v in sorted(by.items(), key=lambda kv: -kv[1]))
        bad = [t for t in ts if not any(scheme_matches(s, t.scheme) for s in specs)]
        out.append(_req(f"quantization.role.{role}", "quantization", title, not bad, measured, " or ".join(specs),
                        f"{len(bad)} of {len(ts)} tensors differ, e.g. {bad[0].name} ({bad[0].scheme.name})" if bad else ""))
    if p.min_share_quantized is not None:
        share = inspect_report["summary"]["share_quantized"]
        out.append(_req("quantization.share", "quantization", "share of parameters quantized",
                        share >= p.min_share_quantized, round(share, 4), p.min_share_quantized))
    for role in p.input_scales:
        ts = [t for t in ckpt.tensors.values() if t.role == role and t.scheme.quantized and len(t.shape) >= 2]
        lacking = [t for t in ts if t.part("input_scale") is None]
        out.append(_req(f"quantization.input-scales.{role}", "quantization",
                        f"every quantized {role} tensor has a static input (activation) scale",
                        bool(ts) and not lacking, f"{len(lacking)} of {len(ts)} lack one" if ts else f"no quantized {role}",
                        "0 lacking", f"e.g. {lacking[0].name}" if lacking else ""))
    return out


# -- deployment targets ----------------------------------------------------------------------

def _target(ckpt: Checkpoint, t: Target, i: int, p: Policy) -> list[Requirement]:
    from nvfp4tools.estimate import Settings, estimate
    from nvfp4tools.gpus import custom_gpu, get_gpu, parse_size

    group = f"target:{t.name}"
    where = p.where("targets", i)
    desc = f"{t.gpu} {t.engine}" + (f" TP{t.tp}" if t.tp > 1 else "") + (f" context {t.context}" if t.context else "")
    try:
        gpu = get_gpu(t.gpu)
        if t.vram:
            gpu = custom_gpu(parse_size(t.vram, option="vram", require_unit=True), gpu)
        s = Settings(engine=t.engine, context=t.context, kv_dtype=t.kv_dtype, mem_fraction=t.mem_fraction,
                     swa_ratio=t.swa_ratio, max_seqs=t.max_seqs, tp=t.tp, text_only=t.text_only,
                     max_batched_tokens=t.max_batched_tokens)
        r = estimate(ckpt, gpu, s).report
    except UsageError as e:  # the target as written cannot be estimated: the policy must change
        raise PolicyError(f"{where} (target {t.name!r}): {e.message}", hint=e.hint) from None
    except Nvfp4ToolsError as e:  # the checkpoint cannot be sized (no config.json, ...)
        return [_req(f"target.{t.name}.fits", group, f"fits on {desc}", False, "cannot be estimated", "fits",
                     e.one_line())]
    cap = r["capacity"]
    ec = r["engine_compat"]
    errors = [f for f in ec["findings"] if f["severity"] == "error"]
    paths = "; ".join(f"{p['weights']} {p['layer']} -> {p['kernel']} {p['compute']}" for p in ec["kernel_paths"])
    out = [_req(f"target.{t.name}.loads", group, f"{t.engine} {ec['checked_against']['version']} loads and runs it on "
                f"{t.gpu}", not errors, "yes" if not errors else f"no ({len(errors)} problems)", "loads",
                "; ".join(f"{f['code']}: {f['message']}" for f in errors)[:500] if errors else paths)]
    if t.fits:
        margin = r["margin_bytes"] / GiB
        out.append(_req(f"target.{t.name}.fits", group, f"fits on {desc}", bool(r["fits"]),
                        f"{'yes' if r['fits'] else 'no'} (margin {margin:+.2f} GiB)", "fits",
                        f"weights {r['weights']['bytes_per_gpu'] / GiB:.2f} GiB per GPU, KV {r['kv']['dtype']}, "
                        f"context {r['settings']['context']}" + _would_fit(r)))
    if t.min_kv_tokens is not None:
        v = int(cap.get("kv_pool_tokens", 0))
        out.append(_req(f"target.{t.name}.kv-tokens", group, f"KV-cache tokens on {desc}", v >= t.min_kv_tokens,
                        v, f">= {t.min_kv_tokens}"))
    if t.min_concurrency is not None:
        v = float(cap.get("max_concurrency", 0))
        out.append(_req(f"target.{t.name}.concurrency", group,
                        f"concurrent sequences of {r['settings']['context']} tokens on {t.gpu} {t.engine}",
                        v >= t.min_concurrency, v, f">= {t.min_concurrency:g}"))
    if t.min_decode_tokens_per_s is not None:
        v = float(r["decode"]["tokens_per_s_ceiling"])
        out.append(_req(f"target.{t.name}.decode", group, f"batch-1 decode ceiling (tokens/s) on {desc}",
                        v >= t.min_decode_tokens_per_s, v, f">= {t.min_decode_tokens_per_s:g}"))
    return out


# -- numerics --------------------------------------------------------------------------------

def _numerics(ckpt: Checkpoint, p: Policy, against_path: str | None, remote: bool) -> list[Requirement]:
    from nvfp4tools import formats
    from nvfp4tools.errors import BackendUnavailable
    from nvfp4tools.kernels_ref import dispatch
    from nvfp4tools.verify import Limits, verify

    title = "every sampled quantized layer is well formed and decodes as the format specifies"
    if remote:
        return [_req("numerics.verify", "numerics", title, None,
                     detail="read from the Hub: headers only, no weights to verify (download the checkpoint)")]
    if not any(t.scheme.quantized and len(t.shape) >= 2 for t in ckpt.tensors.values()):
        return [_req("numerics.verify", "numerics", title, None, detail="no quantized linear layer to verify")]
    out: list[Requirement] = []
    backends = []
    for name in p.backends:
        if name not in dispatch.names():
            raise PolicyError(f"{p.where('numerics', 'backends')}: unknown backend {name!r}",
                              hint=f"known: {', '.join(dispatch.names())}")
        try:
            backends.append(dispatch.get(name))
        except BackendUnavailable as e:
            allowed = p.allow_missing_backends
            out.append(_req(f"numerics.backend.{name}", "numerics", f"backend {name} runs here",
                            None if allowed else False, "unavailable", "runs",
                            e.message + ("; allow-missing-backends = true" if allowed else "")))
    if not backends:
        # every backend named is unavailable here and the policy allows that: the checks they
        # would run are unchecked, listed with the reason, never left out
        why = "no backend of the policy runs on this machine"
        out.append(_req("numerics.verify", "numerics", title, None, detail=why))
        if against_path:
            out.append(_req("numerics.against.source", "numerics", f"{against_path} is this checkpoint's original",
                            None, detail=why))
        return out
    against = formats.read(against_path) if against_path else None
    rep = verify(ckpt, backends=backends, sample=p.sample, tokens=p.tokens, seed=p.seed, against=against,
                 limits=Limits(dict(p.min_sqnr_db), dict(p.max_output_error)))
    layers = rep["layers"]
    sampled = f"{len(layers)} layers" + ("" if p.sample is None else f" (seeded sample, seed {p.seed})")
    bad = [x for x in layers if {"well_formed", "path"} & set(x["failed_checks"])]
    out.append(_req("numerics.verify", "numerics", title, not bad, f"{len(bad)} of {sampled} failed", 0,
                    "; ".join(f"{x['name']}: {'; '.join(x['problems']) or 'format-formula path differs'}"
                              for x in bad[:3])))
    for b in rep["backends"]:
        if b["state"] != "ran":
            out.append(_req(f"numerics.backend.{b['name']}", "numerics", f"backend {b['name']} runs here", None,
                            b["state"].replace("_", " "), "runs", b["reason"] or ""))
            continue
        errs = [r for x in layers for r in x["backends"] if r["backend"] == b["name"]]
        worst = max((math.inf if r["rel_err"] is None else r["rel_err"] for r in errs), default=0.0)
        out.append(_req(f"numerics.backend.{b['name']}", "numerics",
                        f"backend {b['name']} matches the float64 reference", all(r["pass"] for r in errs),
                        f"max rel err {worst:.2e} over {len(errs)} layers", f"<= {b['tolerance_rel']:g}"))
    ag = rep["summary"]["against"]
    if ag is not None:
        out.append(_req("numerics.against.source", "numerics", f"{ag['source']} is this checkpoint's original",
                        not ag["not_source"] and ag["n_matched"] > 0,
                        "no layer matched" if ag["median_weight_sqnr_db"] is None
                        else f"median weight SQNR {ag['median_weight_sqnr_db']:.1f} dB", "> 0 dB",
                        ag["message"] or ""))
        if p.max_unmatched is not None:
            out.append(_req("numerics.against.unmatched", "numerics", "quantized layers matched to the original",
                            ag["n_unmatched"] <= p.max_unmatched, ag["n_unmatched"], f"<= {p.max_unmatched} unmatched",
                            "; ".join(f"{u['name']}: {u['reason']}" for u in ag["unmatched"][:3])))
        for role in rep["summary"]["by_role"]:
            rows = [x for x in layers if x["role"] == role["role"] and x.get("against")]
            if not rows:
                continue
            low = [x for x in rows if "against" in x["failed_checks"]]
            worst_db = role.get("min_weight_sqnr_db")
            out.append(_req(f"numerics.against.{role['role']}", "numerics",
                            f"{role['role']}: weight SQNR and output error against the original", not low,
                            f"min SQNR {worst_db:.2f} dB, max output err {_num(role['max_output_rel_err'])}"
                            if worst_db is not None else "SQNR infinite (identical weights)",
                            f"SQNR >= {role['sqnr_floor_db']:g} dB"
                            + (f", err <= {p.max_output_error.get(role['role'], p.max_output_error.get('*'))}"
                               if p.max_output_error else ""),
                            f"{len(low)} of {len(rows)} layers outside, e.g. {low[0]['name']}" if low else ""))
    return out


def _would_fit(r: dict[str, Any]) -> str:
    if r["fits"]:
        return ""
    ok = [x["change"] for x in r.get("suggestions", ()) if x["fits"]]
    return f"; short by {r['shortfall_bytes'] / GiB:.2f} GiB" + (f"; would fit with {' or '.join(ok)}" if ok else "")


def _num(v: float | None) -> str:
    return "non-finite" if v is None else f"{v:.3g}"


# -- the gate --------------------------------------------------------------------------------

def run(path: str, policy: Policy, against: str | None = None) -> dict[str, Any]:
    from nvfp4tools import formats
    from nvfp4tools.inspect import build_report

    ckpt = formats.read(path)
    remote = bool(ckpt.metadata.get("remote"))
    inspect_report = build_report(ckpt, deep=policy.deep and not remote)
    reqs = _findings(ckpt, inspect_report, policy, remote)
    reqs += _quantization(ckpt, inspect_report, policy)
    for i, t in enumerate(policy.targets):
        reqs += _target(ckpt, t, i, policy)
    if policy.verify:
        reqs += _numerics(ckpt, policy, against or policy.against, remote)
    n = {s: sum(r.status == s for r in reqs) for s in ("pass", "fail", "unchecked")}
    failed = n["fail"] > 0 or (policy.fail_on_unchecked and n["unchecked"] > 0)
    return {
        "schema": SCHEMA, "tool_version": __version__, "source": ckpt.source, "format": ckpt.format,
        "remote": remote,
        "policy": {"source": policy.source, "version": policy.version, "fail_on_unchecked": policy.fail_on_unchecked},
        "against": against or policy.against,
        "requirements": [asdict(r) for r in reqs],
        "summary": {"n_requirements": len(reqs), "n_passed": n["pass"], "n_failed": n["fail"],
                    "n_unchecked": n["unchecked"]},
        "verdict": "fail" if failed else "pass",
    }
