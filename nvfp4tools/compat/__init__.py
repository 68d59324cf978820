"""Engine compatibility: will vLLM, SGLang and llama.cpp load this checkpoint on this GPU, and
which kernel runs each quantized layer there?

The facts are data (:mod:`.facts`, each row citing the engine source file and function it was
read from and the engine versions it holds for); :mod:`.rules` evaluates a checkpoint against
them. ``inspect``, ``estimate`` and ``check`` all ask this module, so their answers agree.
Stdlib only.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Iterable

from nvfp4tools.model import Checkpoint, Finding

from . import facts
from .model import CC, ENGINE_NAMES, ENGINES, Assessment, Engine, KernelPath, cc_text, parse_cc
from .rules import (Target, assess, kernel_path, kv_dtype_fact, marlin_padded_nk, padding_bytes, padding_rule,
                    prepare, weight_family)

__all__ = ["ENGINES", "Assessment", "Target", "assess", "assess_all", "kernel_path", "kv_dtype_fact",
           "marlin_padded_nk", "padding_bytes", "padding_rule", "weight_family", "as_dict", "facts"]

_WHERE = "\x00"   # placeholder for the engine/GPU label, filled once GPU classes are merged


def _gpu_classes(gpus: Iterable[Any]) -> list[tuple[CC, tuple[str, ...]]]:
    by: dict[CC, list[str]] = {}
    for g in gpus:
        by.setdefault(parse_cc(g.compute_capability), []).append(g.key)
    return [(cc, tuple(keys)) for cc, keys in sorted(by.items())]


def _label(engine: Engine, ccs: list[CC]) -> str:
    name = ENGINE_NAMES[engine]
    if not ccs:
        return name
    lo, hi = cc_text(ccs[0]), cc_text(ccs[-1])
    return f"{name} on {lo}" if lo == hi else f"{name} on {lo}-{hi}"


def assess_all(ckpt: Checkpoint, engines: Iterable[Engine] = ENGINES, gpus: Iterable[Any] | None = None,
               tp: int = 1, kv_dtype: str | None = None) -> list[Assessment]:
    """One assessment per engine and class of GPUs (compute capability). GPUs (from
    :mod:`nvfp4tools.gpus`) default to every GPU in the table; neighbouring classes with the same
    answer are merged, so the answer reads "vLLM on sm_80-sm_90: ..."."""
    if gpus is None:
        from nvfp4tools.gpus import all_gpus

        gpus = all_gpus()
    classes = _gpu_classes(gpus)
    prep = prepare(ckpt, tp)
    out: list[Assessment] = []
    for engine in engines:
        if engine == "llamacpp":   # what llama.cpp loads does not depend on the GPU
            a = assess(ckpt, Target(engine, None, tuple(k for _, ks in classes for k in ks), tp, kv_dtype))
            out.append(_relabel(a, _label(engine, [])))
            continue
        merged: list[tuple[list[CC], Assessment]] = []
        for cc, keys in classes:
            a = assess(ckpt, Target(engine, cc, keys, tp, kv_dtype), where=_WHERE, prep=prep)
            if merged and _same(merged[-1][1], a):
                ccs, prev = merged[-1]
                merged[-1] = (ccs + [cc], replace(prev, ccs=prev.ccs + (cc,), gpus=prev.gpus + keys))
            else:
                merged.append(([cc], a))
        out += [_relabel(a, _label(engine, ccs)) for ccs, a in merged]
    return out


def label(a: Assessment) -> str:
    """"vLLM on sm_80-sm_89": how findings name this assessment's engine and GPU classes."""
    return _label(a.engine, list(a.ccs))


def _same(a: Assessment, b: Assessment) -> bool:
    return a.loads == b.loads and [(u.path.id, u.n_tensors) for u in a.paths] == \
        [(u.path.id, u.n_tensors) for u in b.paths] and a.findings == b.findings


def _relabel(a: Assessment, label: str) -> Assessment:
    return replace(a, findings=tuple(replace(f, message=f.message.replace(_WHERE, label)) for f in a.findings))


def as_dict(a: Assessment) -> dict[str, Any]:
    return {
        "engine": a.engine,
        "checked_against": {"version": a.release.version, "commit": a.release.commit},
        "compute_capabilities": [f"{c[0]}.{c[1]}" for c in a.ccs],
        "gpus": list(a.gpus),
        "loads": a.loads,
        "kernel_paths": [{"id": u.path.id, "layer": u.path.layer, "weights": u.path.weights, "scheme": u.scheme,
                          "kernel": u.path.kernel, "compute": u.path.compute, "tensors": u.n_tensors,
                          "roles": list(u.roles), "source": u.path.source.cite()} for u in a.paths],
        "findings": [finding_dict(f) for f in a.findings],
    }


def finding_dict(f: Finding) -> dict[str, Any]:
    return {"code": f.code, "severity": f.severity, "message": f.message, "tensor": f.tensor, "file": f.file,
            "source": f.source}


def lowered(f: Finding) -> Finding:
    """A finding about a deployment the user did not name: it cannot fail the checkpoint."""
    if f.severity != "error":
        return f
    return replace(f, severity="info" if f.code == "engine_format" else "warning")


def path_for(ckpt: Checkpoint, engine: Engine, cc: CC, kind: str, family: str) -> KernelPath | None:
    return kernel_path(engine, kind, family, cc, ckpt.format)
