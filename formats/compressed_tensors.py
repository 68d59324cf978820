"""compressed-tensors checkpoints (vLLM / llm-compressor): config.json
``quantization_config.quant_method == "compressed-tensors"``.

Formats read (compressed-tensors ``config/base.py`` ``CompressionFormat``):
``nvfp4-pack-quantized`` (``weight_packed`` U8 [out, in/2], ``weight_scale`` F8_E4M3 [out, in/16],
``weight_global_scale`` F32 [1] = **1/weight_scale_2**, ``input_global_scale`` F32 [1] =
**1/input_scale``), ``pack-quantized`` (int4/int8 in int32 words, ``weight_scale``
[out, in/group], ``weight_shape`` I64 [2], optional ``weight_zero_point`` and ``weight_g_idx``),
``float-quantized`` / ``naive-quantized`` / ``int-quantized`` (weight stored in fp8/int8 with
``weight_scale``) and ``mixed-precision`` (per-group ``format``). KV-cache scales live on the
attention module (``self_attn.k_scale``).
"""

from __future__ import annotations

from typing import Any

from nvfp4tools import schemes
from nvfp4tools.errors import UnsupportedError
from nvfp4tools.model import Checkpoint, Finding, QuantScheme

from . import register
from ._assemble import Suffix
from ._patterns import PatternSet
from ._safetensors import declaration, discover
from ._stfamily import build, config_quant_method, quant_method
from .base import FormatSpec

SUFFIXES = (
    Suffix("weight_packed", "data"),
    Suffix("weight", "data"),
    Suffix("weight_scale", "block_scale"),
    Suffix("weight_global_scale", "global_scale", "divisor"),
    Suffix("input_global_scale", "input_scale", "divisor"),
    Suffix("input_scale", "input_scale", "multiplier"),
    Suffix("weight_zero_point", "zero_point"),
    Suffix("weight_g_idx", "g_idx"),
    Suffix("weight_shape", "shape"),
)


def _args_scheme(weights: dict[str, Any], acts: dict[str, Any] | None) -> QuantScheme | None:
    """QuantizationArgs (as JSON) -> scheme."""
    bits = int(weights.get("num_bits") or 8)   # (types and ranges checked by formats/validate.py)
    typ = str(weights.get("type", "int"))
    group = weights.get("group_size")
    group = int(group) if group is not None and group > 0 else None  # -1: per channel (quant_args.py)
    act_q = acts is not None
    if typ == "float" and bits == 4:
        if group in (None, 16):
            return schemes.NVFP4 if act_q else schemes.NVFP4_A16
        return schemes.MXFP4
    if typ == "float" and bits == 8:
        return schemes.FP8 if act_q else schemes.FP8_A16
    if typ == "int":
        if bits == 8 and act_q:
            return schemes.INT8
        actorder = weights.get("actorder") in ("group", "dynamic", True)
        return schemes.int_group(bits, group if isinstance(group, int) else None,
                                 bool(weights.get("symmetric", True)), actorder)
    return None


def sniff(path: str) -> bool:
    decl = declaration(path)
    return decl is not None and config_quant_method(decl[0]) == "compressed-tensors"


def read(path: str) -> Checkpoint:
    src = discover(path)
    if src is None or quant_method(src) != "compressed-tensors":
        raise UnsupportedError(f"{path}: not a compressed-tensors checkpoint")
    qc: dict[str, Any] = src.config["quantization_config"]
    fmt = str(qc.get("format") or "")
    groups = qc.get("config_groups") if isinstance(qc.get("config_groups"), dict) else {}
    ignore = tuple(x for x in (qc.get("ignore") or []) if isinstance(x, str))
    findings: list[Finding] = []
    if src.hf_quant_config is not None:
        findings.append(Finding(
            "stale_side_config", "info",
            "hf_quant_config.json is present but config.json says quant_method 'compressed-tensors'; "
            "config.json was trusted (compressed-tensors' converter copies the ModelOpt file unchanged)"))

    parsed: list[tuple[list[str], QuantScheme | None, dict[str, Any]]] = []
    by_name: list[tuple[PatternSet, QuantScheme | None]] = []
    bits = 4
    static_act = False
    for gname, g in groups.items():
        if not isinstance(g, dict):
            continue
        w = g.get("weights") if isinstance(g.get("weights"), dict) else None
        a = g.get("input_activations") if isinstance(g.get("input_activations"), dict) else None
        if w is None:
            continue
        # the int32 word packing (pack-quantized) is read with its group's bit width; an int-quantized
        # group (int8 stored as I8, a GGUF Q8_0 written back) beside it packs nothing
        if str(w.get("type")) == "int" and str(g.get("format") or fmt) in ("pack-quantized", "mixed-precision"):
            bits = int(w.get("num_bits") or 4)
        if a is not None and a.get("dynamic") is not True:
            static_act = True
        targets = [t for t in (g.get("targets") or []) if isinstance(t, str)]
        parsed.append((targets, _args_scheme(w, a), g))
        # module-name targets (a regex, a dotted path, or a plain lower-case name such as "lm_head"; class
        # names are capitalised), compiled once
        if any(t.startswith("re:") or "." in t or t[:1].islower() for t in targets):
            by_name.append((PatternSet(targets, f"config.json quantization_config.config_groups.{gname}.targets"),
                            parsed[-1][1]))

    ignore_set = PatternSet(ignore, "config.json quantization_config.ignore")

    def expect(module: str) -> QuantScheme | None:
        if ignore_set.matches(module):
            return None
        for target_set, scheme in by_name:
            if target_set.matches(module):
                return scheme
        for targets, scheme, _ in parsed:
            if not targets or any(t in ("Linear", "LinearBase") or t[:1].isupper() for t in targets):
                return scheme
        return None

    kvs = qc.get("kv_cache_scheme")
    kv = None
    if isinstance(kvs, dict):
        kv = f"{kvs.get('type', '')}{kvs.get('num_bits', '')}"
    version = qc.get("version") or src.config.get("compressed_tensors_version")
    algo = fmt or None
    if fmt == "mixed-precision":
        algo = "mixed-precision: " + ", ".join(sorted({str(g.get("format")) for _, _, g in parsed}))
    return build(
        src, format_name="compressed-tensors", suffixes=SUFFIXES, expect=expect,
        config_label=f"config.json quantization_config (format {fmt})", producer="compressed-tensors",
        producer_version=str(version) if version else None, quant_method="compressed-tensors",
        algorithm=algo, kv_cache_scheme=kv, patterns=ignore, pattern_label="quantization_config ignore",
        findings=findings, int_bits=bits, requires_input_scale=static_act and fmt != "pack-quantized",
        metadata={"quantization_status": qc.get("quantization_status")},
    )


def _writer():
    from .ct_writer import CTWriter
    return CTWriter()


SPEC = register(FormatSpec("compressed-tensors", sniff, read,
                           "compressed-tensors (vLLM / llm-compressor) safetensors",
                               writer=_writer))
