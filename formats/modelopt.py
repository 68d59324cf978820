"""NVIDIA ModelOpt unified HF export (NVFP4, W4A16_NVFP4, FP8, MIXED_PRECISION, AWQ).

Declared by ``hf_quant_config.json`` (``producer.name == "modelopt"``) and/or config.json
``quantization_config.quant_method == "modelopt"`` (Model-Optimizer
``modelopt/torch/export/unified_export_hf.py``, ``convert_hf_config.py``).

Per quantized Linear ``P`` (NVFP4): ``P.weight`` U8 [out, in/2] (element 2i in the low nibble),
``P.weight_scale`` F8_E4M3 [out, in/16] (linear, not swizzled), ``P.weight_scale_2`` F32 0-d
(multiplier, ``amax/(6*448)``), ``P.input_scale`` F32 0-d (multiplier). KV-cache scales sit on
``self_attn.k_proj.k_scale`` / ``v_proj.v_scale``. Experts are exported per expert
(``experts.E.{gate,up,down}_proj``).
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
from ._stfamily import build, config_quant_method
from .base import FormatSpec

SUFFIXES = (
    Suffix("weight", "data"),
    Suffix("weight_scale", "block_scale"),
    Suffix("weight_scale_2", "global_scale", "multiplier"),
    Suffix("input_scale", "input_scale", "multiplier"),
    Suffix("pre_quant_scale", "zero_point"),  # AWQ smoothing vector; kept with its weight
)

# quant_algo -> scheme (Model-Optimizer modelopt/torch/export/quant_utils.py quant_algo strings)
ALGOS: dict[str, QuantScheme] = {
    "NVFP4": schemes.NVFP4,
    "NVFP4_AWQ": schemes.NVFP4,
    "NVFP4_SVD": schemes.NVFP4,
    "W4A16_NVFP4": schemes.NVFP4_A16,
    "FP8": schemes.FP8,
    "FP8_PER_CHANNEL_PER_TOKEN": schemes.FP8,
    "W4A16_AWQ": schemes.int_group(4, 128, True),
    "W4A8_AWQ": schemes.int_group(4, 128, True),
    "W8A16": schemes.INT8_A16,
    "W8A8_SQ_PER_CHANNEL": schemes.INT8,
    "W4A8_NVFP4_FP8": schemes.NVFP4_A16,
    "MXFP8": schemes.FP8_A16,
}
_STATIC_INPUT = {"NVFP4", "NVFP4_AWQ", "FP8", "W4A8_NVFP4_FP8"}


def _declaration(config: dict[str, Any], hq: dict[str, Any] | None) -> tuple[dict[str, Any], str] | None:
    """The ModelOpt quantization block and where it came from."""
    qm = config_quant_method(config)
    if qm is not None and qm != "modelopt":
        return None  # config.json is the authority (compressed-tensors' converter leaves a stale hf_quant_config.json)
    if isinstance(hq, dict) and isinstance(hq.get("quantization"), dict):
        return hq, "hf_quant_config.json"
    if qm == "modelopt":
        return config["quantization_config"], "config.json quantization_config"
    return None


def sniff(path: str) -> bool:
    decl = declaration(path)
    return decl is not None and _declaration(*decl) is not None


def read(path: str) -> Checkpoint:
    src = discover(path)
    decl = _declaration(src.config, src.hf_quant_config) if src else None
    if src is None or decl is None:
        raise UnsupportedError(f"{path}: not a ModelOpt checkpoint (no hf_quant_config.json and config.json "
                               "quant_method is not 'modelopt')")
    data, where = decl
    findings: list[Finding] = []
    if where == "hf_quant_config.json":
        q = data["quantization"]
        producer = data.get("producer") or {}
    else:
        q = data
        producer = data.get("producer") or {}
    algo = str(q.get("quant_algo") or "")
    excludes = q.get("exclude_modules") if where == "hf_quant_config.json" else q.get("ignore")
    excludes = tuple(x for x in (excludes or []) if isinstance(x, str))
    layers = q.get("quantized_layers") if isinstance(q.get("quantized_layers"), dict) else None
    kv = q.get("kv_cache_quant_algo")
    if kv is None and isinstance(q.get("kv_cache_scheme"), dict):
        ks = q["kv_cache_scheme"]
        kv = f"{ks.get('type', '')}{ks.get('num_bits', '')}".upper() or None
    if algo not in ALGOS and algo != "MIXED_PRECISION":
        findings.append(Finding("unknown_quant_algo", "warning",
                                f"{where}: quant_algo {algo!r} is not one nvfp4tools knows; schemes are read "
                                "from the stored dtypes only"))

    group, scheme = q.get("group_size"), ALGOS.get(algo)
    if scheme is not None and scheme.name == "nvfp4" and group is not None and group != scheme.block_size:
        # NVFP4 blocks are 16 elements by the format (one E4M3 scale per 16); engines size the
        # block-scale tensors from group_size (vLLM ModelOptNvFp4Config), so another value fails to load
        findings.append(Finding("group_size_mismatch", "error",
                                f"{where}: group_size {group!r}, but NVFP4 stores one block scale per "
                                f"{scheme.block_size} elements (weight_scale holds in/{scheme.block_size} columns)"))

    exclude_set = PatternSet(excludes, f"{where} {'exclude_modules' if where.startswith('hf') else 'ignore'}")

    def expect(module: str) -> QuantScheme | None:
        if layers is not None:
            entry = layers.get(module)
            if not isinstance(entry, dict):
                return None
            return ALGOS.get(str(entry.get("quant_algo")))
        if exclude_set.matches(module):
            return None
        return ALGOS.get(algo)

    return build(
        src, format_name="modelopt", suffixes=SUFFIXES, expect=expect,
        config_label=f"{where} (quant_algo {algo})", producer=str(producer.get("name") or "modelopt"),
        producer_version=str(producer["version"]) if producer.get("version") else None,
        quant_method="modelopt", algorithm=algo or None, kv_cache_scheme=str(kv) if kv else None,
        patterns=excludes, pattern_label=f"{where} {'exclude_modules' if where.startswith('hf') else 'ignore'}",
        findings=findings, requires_input_scale=algo in _STATIC_INPUT,
        metadata={"quant_config_source": where},
    )


def _writer():
    from .modelopt_writer import ModelOptWriter
    return ModelOptWriter()


SPEC = register(FormatSpec("modelopt", sniff, read, "NVIDIA ModelOpt HF export (hf_quant_config.json)",
                               writer=_writer))
