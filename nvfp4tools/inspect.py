"""``inspect``: what is quantized in a checkpoint, how many bytes, and are the scales healthy.

Works on the format-neutral :class:`~nvfp4tools.model.Checkpoint` only; it never branches on
the format. Reads headers plus the few per-tensor scale values (a few bytes each);
``deep=True`` also scans every block scale. Stdlib only.
"""

from __future__ import annotations

import math
import struct
from collections import OrderedDict
from typing import Any, Iterable

from ._version import __version__
from .arch import arch_to_dict
from .io import PartReader, is_bad_scale
from .model import Checkpoint, Finding, TensorInfo
from .roles import LINEAR_ROLES, ROLES

SCHEMA = "nvfp4tools/inspect/v1"
_F32 = struct.Struct("<f")
_FUSED = {"q": "qkv", "k": "qkv", "v": "qkv", "gate": "gate_up", "up": "gate_up"}
_MAX_EXAMPLES = 3


def _share(num: int, den: int) -> float:
    return round(num / den, 6) if den else 0.0


def _coverage(tensors: Iterable[TensorInfo]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, int]]:
    """Per-role and per-(role, scheme) sums, plus the checkpoint totals, in one pass."""
    totals = {"n_parameters": 0, "n_parameters_quantized": 0, "nbytes": 0, "nbytes_quantized": 0}
    by_role: dict[str, dict[str, Any]] = {}
    cells: dict[tuple[str, str], dict[str, Any]] = {}
    labels: dict[int, str] = {}   # scheme label per scheme object (a handful of schemes, ~50,000 tensors)
    for t in tensors:
        n, nb, sch = t.n_elements, t.nbytes, t.scheme
        r = by_role.get(t.role)
        if r is None:
            r = by_role[t.role] = {"role": t.role, "n_tensors": 0, "n_parameters": 0,
                                   "n_parameters_quantized": 0, "nbytes": 0}
        r["n_tensors"] += 1
        r["n_parameters"] += n
        r["nbytes"] += nb
        totals["n_parameters"] += n
        totals["nbytes"] += nb
        if sch.quantized:
            r["n_parameters_quantized"] += n
            totals["n_parameters_quantized"] += n
            totals["nbytes_quantized"] += nb
        label = labels.get(id(sch))
        if label is None:
            label = labels[id(sch)] = sch.label
        c = cells.get((t.role, label))
        if c is None:
            c = cells[(t.role, label)] = {"role": t.role, "scheme": label, "n_tensors": 0, "n_parameters": 0,
                                          "nbytes": 0}
        c["n_tensors"] += 1
        c["n_parameters"] += n
        c["nbytes"] += nb
    order = {r: i for i, r in enumerate(ROLES)}
    roles = sorted(by_role.values(), key=lambda r: order.get(r["role"], 99))
    for r in roles:
        r["share_quantized"] = _share(r["n_parameters_quantized"], r["n_parameters"])
        r["bits_per_weight"] = round(8 * r["nbytes"] / r["n_parameters"], 4) if r["n_parameters"] else 0.0
    cov = sorted(cells.values(), key=lambda c: (order.get(c["role"], 99), -c["n_parameters"]))
    for c in cov:
        c["share_of_role"] = _share(c["n_parameters"], by_role[c["role"]]["n_parameters"])
    return roles, cov, totals


def _layers(tensors: Iterable[TensorInfo]) -> list[dict[str, Any]]:
    rows: "OrderedDict[tuple[str, int], dict[str, set[str]]]" = OrderedDict()
    experts: dict[tuple[str, int], set[int]] = {}
    fused_e: dict[tuple[str, int], int] = {}
    for t in tensors:
        if t.layer is None:
            continue
        key = (t.stack or "", t.layer)
        rows.setdefault(key, {}).setdefault(t.role, set()).add(t.scheme.name)
        if t.role == "experts":
            if t.expert is not None:
                experts.setdefault(key, set()).add(t.expert)
            if t.n_experts_fused:
                fused_e[key] = max(fused_e.get(key, 0), t.n_experts_fused)
    out: list[dict[str, Any]] = []
    for (stack, idx) in sorted(rows, key=lambda k: (k[0], k[1])):
        cells = rows[(stack, idx)]
        summary: dict[str, str] = {}
        for role in ROLES:
            if role in cells and role != "norm":
                text = "+".join(sorted(cells[role]))
                if role == "experts":
                    n = len(experts.get((stack, idx), ())) or fused_e.get((stack, idx), 0)
                    if n:
                        text += f" x{n}"
                summary[role] = text
        prev = out[-1] if out else None
        if prev and prev["stack"] == stack and prev["roles"] == summary and prev["last"] == idx - 1:
            prev["last"] = idx
        else:
            out.append({"stack": stack, "first": idx, "last": idx, "roles": summary})
    return out


def _layers_expanded(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        for i in range(r["first"], r["last"] + 1):
            out.append({"stack": r["stack"], "first": i, "last": i, "roles": dict(r["roles"])})
    return out


def _add(findings: list[Finding], code: str, severity: str, items: list[tuple[str, str]], what: str) -> None:
    """One finding per code, with a count and a few examples, not one line per tensor."""
    if not items:
        return
    ex = "; ".join(f"'{n}' {d}" for n, d in items[:_MAX_EXAMPLES])
    more = f" (+{len(items) - _MAX_EXAMPLES} more)" if len(items) > _MAX_EXAMPLES else ""
    findings.append(Finding(code, severity, f"{len(items)} {what}: {ex}{more}", tensor=items[0][0]))  # type: ignore[arg-type]


def _fmt(v: float) -> str:
    return repr(v) if not math.isfinite(v) else f"{v:.9g}"


def scale_checks(ckpt: Checkpoint, reader: PartReader) -> list[Finding]:
    """Per-tensor global/input scales: finite and positive; fused shards must agree."""
    findings: list[Finding] = []
    bad_global: list[tuple[str, str]] = []
    bad_input: list[tuple[str, str]] = []
    fused: dict[tuple[Any, ...], list[tuple[str, tuple[float, ...], tuple[float, ...]]]] = {}
    scales = reader.scales
    for t in ckpt.tensors.values():
        if not t.scheme.quantized:
            continue
        gv: tuple[float, ...] = ()
        iv: tuple[float, ...] = ()
        for p in t.parts:
            is_global = p.role == "global_scale"
            if not is_global and p.role != "input_scale":
                continue
            vals = scales(p)
            if is_global:
                gv = vals
            else:
                iv = vals
            if len(vals) > 1 or not (vals[0] > 0.0 and vals[0] != math.inf):  # NaN fails the test too
                bad = [v for v in vals if is_bad_scale(v)]
                if bad:
                    (bad_global if is_global else bad_input).append(
                        (t.name, f"{'global' if is_global else 'input'} scale {_fmt(bad[0])} (stored {p.key})"))
        fk = _FUSED.get(t.proj or "")
        if fk and (gv or iv) and t.layer is not None and t.role in LINEAR_ROLES:
            key = (t.stack, t.layer, t.role, t.expert, fk, t.module.rsplit(".", 1)[0])
            fused.setdefault(key, []).append((t.name, gv, iv))
    _add(findings, "bad_global_scale", "error", bad_global,
         "quantized tensors have a zero, negative or non-finite global weight scale")
    _add(findings, "bad_input_scale", "error", bad_input,
         "quantized tensors have a zero, negative or non-finite input (activation) scale")
    mism_g: list[tuple[str, str]] = []
    mism_i: list[tuple[str, str]] = []
    for key, members in fused.items():
        if len(members) < 2:
            continue
        gs = {m[1] for m in members if m[1]}
        if len(gs) > 1:
            vals = ", ".join(f"{m[0].rsplit('.', 2)[-2]}={_fmt(m[1][0])}" for m in members if m[1])
            mism_g.append((members[0][0], f"({vals})"))
        ins = {m[2] for m in members if m[2]}
        if len(ins) > 1:
            vals = ", ".join(f"{m[0].rsplit('.', 2)[-2]}={_fmt(m[2][0])}" for m in members if m[2])
            mism_i.append((members[0][0], f"({vals})"))
    _add(findings, "fused_global_scale_mismatch", "error", mism_g,
         "q/k/v or gate/up groups have different global weight scales; vLLM/SGLang fuse them and take the "
         "max without requantizing block scales, so the other shards load with wrong magnitudes")
    _add(findings, "fused_input_scale_mismatch", "warning", mism_i,
         "q/k/v or gate/up groups have different input scales; fused kernels use one (the max)")
    return findings


def _uniform_byte(reader: PartReader, part, chunk: int) -> int | None:
    """The byte value every byte of PART holds, or None when they differ (stops at the first chunk
    that differs, so a healthy tensor costs one chunk)."""
    first: bytes | None = None
    for off in range(0, part.nbytes, chunk):
        data = reader.read(part, min(chunk, part.nbytes - off), off)
        if first is None:
            first = data[:1]
        if data.count(first) != len(data):
            return None
    return first[0] if first else None


# bytes.translate tables for the in-block scales of GGUF types (formats._ggml_types.BLOCK_SCALES):
# deleting every byte but the flagged ones leaves the count, in C speed over strided byte slices
_F16_HI_FINITE = bytes(b for b in range(256) if (b & 0x7C) != 0x7C)   # fp16 high byte: exponent not all ones
_NOT_UE4M3_7F = bytes(b for b in range(256) if b != 0x7F)             # UE4M3 0x7F (E4M3 NaN; ggml reads 0)
_NOT_E8M0_FF = bytes(range(255))                                       # E8M0 0xFF (OCP MX NaN)
_STRIP_SIGN = bytes(b & 0x7F for b in range(256))
_UE4M3_ZERO = b"\x00\x80\x7f"                                          # decode to 0 in ggml_ue4m3_to_fp32


def _ggml_block_scales(reader: PartReader, part, chunk: int) -> tuple[list[str], bool]:
    """(problems, every multiplying scale is zero) of the scales inside a GGUF tensor's blocks,
    read in whole blocks, one strided slice per scale byte."""
    from nvfp4tools.formats._ggml_types import BLOCK_SCALES, BY_NAME

    tsize = BY_NAME[part.stored_dtype][1]
    step = max(tsize, chunk - chunk % tsize)
    bad = {"f16": 0, "ue4m3": 0, "e8m0": 0}
    any_nonzero = False
    for off in range(0, part.nbytes, step):
        data = reader.read(part, min(step, part.nbytes - off), off)
        for f in BLOCK_SCALES[part.stored_dtype]:
            for k in range(f.count):
                if f.kind == "f16":
                    lo, hi = data[f.offset + 2 * k::tsize], data[f.offset + 2 * k + 1::tsize]
                    bad["f16"] += len(hi.translate(None, _F16_HI_FINITE))
                    zero = lo.count(0) == len(lo) and hi.translate(_STRIP_SIGN).count(0) == len(hi)
                else:
                    b = data[f.offset + k::tsize]
                    if f.kind == "ue4m3":
                        bad["ue4m3"] += len(b.translate(None, _NOT_UE4M3_7F))
                        zero = len(b.translate(None, _UE4M3_ZERO)) == 0
                    else:
                        bad["e8m0"] += len(b.translate(None, _NOT_E8M0_FF))
                        zero = False   # E8M0 has no zero
                any_nonzero = any_nonzero or (f.role == "d" and not zero)
    what = {"f16": "NaN/inf fp16 block scales",
            "ue4m3": "UE4M3 block scales 0x7F (NaN in E4M3; ggml decodes 0)",
            "e8m0": "E8M0 block scales 0xFF (NaN in OCP MX)"}
    return [f"{n} {what[k]}" for k, n in bad.items() if n], not any_nonzero


def deep_checks(ckpt: Checkpoint, reader: PartReader, scale_stats: dict | None = None) -> list[Finding]:
    """Scan every E4M3 block-scale byte (NaN 0x7F/0xFF, negative: sign bit set, non-zero) and the
    scales inside GGUF blocks (fp16 NaN/inf, UE4M3 0x7F, E8M0 0xFF), and find degenerate layers:
    block scales all zero, or every code byte the same (a zeroed or constant layer computes
    nothing, whatever the kernel). SCALE_STATS, when given, receives each NVFP4 tensor's
    largest positive block scale and its E4M3 subnormal counts (compat.rules.ScaleStats)."""
    from nvfp4tools.compat.rules import ScaleStats
    from nvfp4tools.formats._ggml_types import BLOCK_SCALES

    nan_items: list[tuple[str, str]] = []
    neg_items: list[tuple[str, str]] = []
    nonfinite: list[tuple[str, str]] = []   # scales inside GGUF blocks
    degenerate: list[tuple[str, str]] = []
    chunk = 1 << 24
    drop_nonneg = bytes(range(0x81))  # translate(None, these) leaves only bytes 0x81..0xFF
    drop_neg_nan = bytes(range(0x7F, 0x100))   # leaves the positive, non-NaN bytes 0x00..0x7E
    for t in ckpt.tensors.values():
        if not t.scheme.quantized:
            continue
        bs = t.part("block_scale")
        if bs is not None and bs.stored_dtype == "F8_E4M3":
            n_nan = n_neg = n_zero = top = 0
            small = [0] * 7
            for off in range(0, bs.nbytes, chunk):
                data = reader.read(bs, min(chunk, bs.nbytes - off), off)
                n_nan += data.count(b"\x7f") + data.count(b"\xff")
                n_neg += len(data.translate(None, drop_nonneg)) - data.count(b"\xff")
                n_zero += data.count(b"\x00") + data.count(b"\x80")
                if scale_stats is not None and t.scheme.name == "nvfp4":
                    pos = data.translate(None, drop_neg_nan)
                    top = max(top, max(pos, default=0))
                    for v in range(1, 8):
                        small[v - 1] += pos.count(v)
            if scale_stats is not None and t.scheme.name == "nvfp4":
                scale_stats[t.name] = ScaleStats(top, tuple(small))
            if n_nan:
                nan_items.append((t.name, f"{n_nan} NaN block scales"))
            if n_neg:
                neg_items.append((t.name, f"{n_neg} negative block scales"))
            if bs.nbytes and n_zero == bs.nbytes:
                degenerate.append((t.name, "all block scales are zero"))
                continue
        elif bs is not None and t.scheme.name == "mxfp4" and bs.stored_dtype in ("U8", "F8_E8M0"):
            # E8M0 shared scales (OCP MX v1.0 5.4): 0xFF is NaN; E8M0 has no zero
            n_nan = 0
            for off in range(0, bs.nbytes, chunk):
                n_nan += reader.read(bs, min(chunk, bs.nbytes - off), off).count(b"\xff")
            if n_nan:
                nonfinite.append((t.name, f"{n_nan} E8M0 block scales 0xFF (NaN in OCP MX)"))
        elif bs is not None and bs.nbytes and _uniform_byte(reader, bs, chunk) == 0:
            degenerate.append((t.name, "all block scales are zero"))
            continue
        data_part = t.part("data")
        if bs is None and data_part is not None and data_part.nbytes and data_part.stored_dtype in BLOCK_SCALES:
            problems, all_zero = _ggml_block_scales(reader, data_part, chunk)
            nonfinite.extend((t.name, p) for p in problems)
            if all_zero:
                degenerate.append((t.name, "all block scales are zero"))
                continue
        if data_part is not None and data_part.nbytes > 1:
            b = _uniform_byte(reader, data_part, chunk)
            if b is not None:
                degenerate.append((t.name, f"every code byte is 0x{b:02x}"))
    findings: list[Finding] = []
    _add(findings, "block_scale_nan", "error", nan_items, "tensors have NaN E4M3 block scales")
    _add(findings, "block_scale_nonfinite", "error", nonfinite,
         "tensors have NaN or infinite block scales (inside GGUF blocks, or E8M0 0xFF)")
    _add(findings, "block_scale_negative", "error", neg_items,
         "tensors have negative E4M3 block scales (checkpoints store positive scales; Marlin FP4 assumes them "
         "non-negative and degrades)")
    _add(findings, "degenerate_layer", "error", degenerate,
         "quantized layers are degenerate (they decode to zeros or to one repeated pattern)")
    return findings


def _marlin_flush(ckpt: Checkpoint, stats: dict[str, Any], assessments: list[Any]) -> list[Finding]:
    """Blocks vLLM's Marlin FP4 kernel zeroes, for each vLLM GPU class that runs it (deep only:
    it needs every block scale). A warning: the numbers change, the engine still loads."""
    from . import compat
    from .compat.rules import marlin_flush_finding, marlin_flushed

    flushed = marlin_flushed(ckpt, stats)
    out = []
    for a in assessments:
        if a.engine == "vllm" and any(u.path.id.startswith("vllm.nvfp4.") and u.path.pads in ("marlin", "marlin_moe")
                                      for u in a.paths):
            f = marlin_flush_finding(compat.label(a), ckpt, flushed)
            if f is not None:
                out.append(f)
    return out


def semantic_findings(ckpt: Checkpoint) -> list[Finding]:
    findings: list[Finding] = []
    tensors = list(ckpt.tensors.values())
    any_q = any(t.scheme.quantized for t in tensors)
    if not any_q:
        findings.append(Finding("no_quantized_tensors", "info", "no tensor is quantized"))
        return findings
    attn4 = [t for t in tensors if t.role == "attention" and t.scheme.quantized and t.scheme.bits <= 4]
    if attn4:
        findings.append(Finding(
            "attention_4bit", "info",
            f"{len(attn4)} attention projections are 4-bit ({attn4[0].scheme.label}); attention is the most "
            "quantization-sensitive part of a decoder: NVIDIA's own Gemma 4 NVFP4 keeps it BF16",
            tensor=attn4[0].name))
    experts = [t for t in tensors if t.role == "experts"]
    if experts and not any(t.scheme.quantized for t in experts) and \
            not any(f.code == "not_quantized_as_configured" for f in ckpt.findings):
        n = sum(t.n_elements for t in experts)
        total = sum(t.n_elements for t in tensors)
        findings.append(Finding(
            "experts_unquantized", "warning",
            f"the routed experts ({n:,} parameters, {100 * n / total:.0f}% of the model) are stored "
            f"{experts[0].scheme.name} while other tensors are quantized",
            tensor=experts[0].name))
    return findings


def _f32(v: float) -> float | str:
    """A float32 value written with the fewest digits that read back as the same float32 (1e-06, not
    9.999999974752427e-07); NaN/inf as text, which JSON has no number for."""
    if not math.isfinite(v):
        return repr(v)
    for digits in range(6, 10):
        short = float(f"{v:.{digits}g}")
        if _F32.unpack(_F32.pack(short))[0] == v:
            return short
    return v


def _entry(key: str, vtype: str, value: Any, length: int | None) -> dict[str, Any]:
    """One key/value as JSON carries it; an array keeps its length and whether items were left out
    (a GGUF reader keeps the first few of an array longer than 4,096, e.g. the vocabulary)."""
    if vtype.endswith("FLOAT32]") or vtype == "FLOAT32":
        value = [_f32(x) for x in value] if isinstance(value, list) else _f32(value)
    elif isinstance(value, float) and not math.isfinite(value):
        value = repr(value)   # JSON has no NaN/inf
    truncated = length is not None and isinstance(value, list) and len(value) < length
    return {"key": key, "type": vtype, "value": value, "length": length, "truncated": truncated}


def _json_type(v: Any) -> str:
    if isinstance(v, bool):
        return "BOOL"
    if isinstance(v, int):
        return "INT"
    if isinstance(v, float):
        return "FLOAT"
    if isinstance(v, str):
        return "STRING"
    if v is None:
        return "NULL"
    if isinstance(v, list):
        kinds = {_json_type(x) for x in v}
        return f"ARRAY[{kinds.pop() if len(kinds) == 1 else 'MIXED' if kinds else 'EMPTY'}]"
    return "OBJECT"


def _flatten(prefix: str, obj: Any, out: list[dict[str, Any]]) -> None:
    """Nested JSON objects as dotted keys (``text_config.rope_parameters.rope_theta``), the way GGUF
    spells its keys; arrays stay values."""
    if isinstance(obj, dict) and obj:
        for k, v in obj.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out.append(_entry(prefix, _json_type(obj), obj, len(obj) if isinstance(obj, list) else None))


def _side_json(ckpt: Checkpoint, name: str) -> dict[str, Any] | None:
    from nvfp4tools.errors import Nvfp4ToolsError
    from nvfp4tools.formats.validate import read_json

    if ckpt.metadata.get("remote"):
        return None
    try:
        v = read_json(ckpt.root, name)   # a regular file inside the folder, bounded
    except Nvfp4ToolsError:
        return None
    return v if isinstance(v, dict) else None


def file_metadata(ckpt: Checkpoint) -> list[dict[str, Any]]:
    """Every key/value of the checkpoint's headers and side configs, source by source (``inspect
    --metadata``): the key/values a reader lists (``metadata["key_values"]``: the GGUF header),
    else config.json and hf_quant_config.json flattened to dotted keys; each safetensors file's
    ``__metadata__``."""
    sources: list[dict[str, Any]] = []
    listed = ckpt.metadata.get("key_values")
    if isinstance(listed, dict):
        for src, entries in listed.items():
            sources.append({"source": src, "entries": [_entry(*e) for e in entries]})
    else:
        for name, obj in (("config.json", dict(ckpt.config) or _side_json(ckpt, "config.json")),
                          ("hf_quant_config.json", _side_json(ckpt, "hf_quant_config.json"))):
            if obj:
                entries: list[dict[str, Any]] = []
                _flatten("", obj, entries)
                sources.append({"source": name, "entries": entries})
    per_file = ckpt.metadata.get("safetensors_metadata")
    if isinstance(per_file, dict):
        for f, m in per_file.items():
            if m:
                sources.append({"source": f"{f} (__metadata__)",
                                "entries": [_entry(k, "STRING", v, None) for k, v in m.items()]})
    return sources


def build_report(ckpt: Checkpoint, *, deep: bool = False, expand_layers: bool = False,
                 with_tensors: bool = False, with_metadata: bool = False, engines: tuple[str, ...] | None = None,
                 gpus: list[Any] | None = None) -> dict[str, Any]:
    """ENGINES / GPUS: the deployments to assess (default: every engine on every GPU class). When
    both are named (llama.cpp needs no GPU), the user chose the deployment and an engine's refusal
    is an error finding; otherwise it is a warning, as the checkpoint itself is not at fault."""
    from . import compat

    tensors = list(ckpt.tensors.values())
    findings = list(ckpt.findings) + semantic_findings(ckpt)
    assessments = compat.assess_all(ckpt, engines or compat.ENGINES, gpus)
    named = engines is not None and (gpus is not None or set(engines) == {"llamacpp"})
    for a in assessments:
        findings += a.findings if named else [compat.lowered(f) for f in a.findings]
    if ckpt.metadata.get("remote"):
        findings.append(Finding("remote_headers_only", "info",
                                "read from the Hub: headers and config only; per-tensor scale values were not "
                                "checked (download the checkpoint and inspect its folder for that)"))
    else:
        with PartReader(ckpt.root) as reader:
            findings += scale_checks(ckpt, reader)
            if deep:
                stats: dict[str, Any] = {}
                findings += deep_checks(ckpt, reader, stats)
                findings += _marlin_flush(ckpt, stats, assessments)
    roles, coverage, totals = _coverage(tensors)
    n_params, n_q = totals["n_parameters"], totals["n_parameters_quantized"]
    nbytes, qbytes = totals["nbytes"], totals["nbytes_quantized"]
    layers = _layers(tensors)
    sev = {"error": 0, "warning": 1, "info": 2}
    findings.sort(key=lambda f: sev[f.severity])
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "tool_version": __version__,
        "source": ckpt.source,
        "format": ckpt.format,
        "producer": {"name": ckpt.producer, "version": ckpt.producer_version},
        "quant_method": ckpt.quant_method,
        "algorithm": ckpt.algorithm,
        "kv_cache_scheme": ckpt.kv_cache_scheme,
        "files": list(ckpt.files),
        "bytes_on_disk": ckpt.file_bytes,
        "summary": {
            "n_tensors": len(tensors),
            "n_parameters": n_params,
            "n_parameters_quantized": n_q,
            "share_quantized": _share(n_q, n_params),
            "tensor_bytes": nbytes,
            "bits_per_weight": round(8 * nbytes / n_params, 4) if n_params else 0.0,
            "bits_per_quantized_weight": round(8 * qbytes / n_q, 4) if n_q else None,
        },
        "architecture": arch_to_dict(ckpt.arch),
        "roles": roles,
        "coverage": coverage,
        "layers": _layers_expanded(layers) if expand_layers else layers,
        "engines": [compat.as_dict(a) for a in assessments],
        "findings": [compat.finding_dict(f) for f in findings],
        "metadata": {k: v for k, v in ckpt.metadata.items() if isinstance(v, (str, int, float, bool)) or v is None},
    }
    if with_metadata:
        report["file_metadata"] = file_metadata(ckpt)
    if with_tensors:
        report["tensors"] = [
            {
                "name": t.name, "shape": list(t.shape), "scheme": t.scheme.name, "role": t.role,
                "layer": t.layer, "nbytes": t.nbytes,
                "parts": [{"role": p.role, "key": p.key, "file": p.file, "offset": p.offset, "nbytes": p.nbytes,
                           "dtype": p.stored_dtype, "shape": list(p.stored_shape), "stored_as": p.stored_as}
                          for p in t.parts],
            }
            for t in tensors
        ]
    return report


def has_errors(report: dict[str, Any]) -> bool:
    return any(f["severity"] == "error" for f in report["findings"])
