"""Shared reader body for the safetensors-based formats (plain, ModelOpt, compressed-tensors)."""

from __future__ import annotations

from typing import Any, Callable

from nvfp4tools.arch import check_against_tensors, parse_arch
from nvfp4tools.errors import FormatError
from nvfp4tools.io import PartReader
from nvfp4tools.model import Checkpoint, Finding, QuantScheme

from ._assemble import Assembler, Suffix
from ._patterns import unmatched_patterns
from ._safetensors import Source, parse_all


def quant_method(src: Source) -> str | None:
    return config_quant_method(src.config)


def config_quant_method(config: dict[str, Any]) -> str | None:
    qc = config.get("quantization_config")
    if isinstance(qc, dict):
        qm = qc.get("quant_method")
        return str(qm) if qm is not None else None
    return None


def build(
    src: Source,
    *,
    format_name: str,
    suffixes: tuple[Suffix, ...],
    expect: Callable[[str], QuantScheme | None],
    config_label: str,
    producer: str | None,
    producer_version: str | None,
    quant_method: str | None,
    algorithm: str | None,
    kv_cache_scheme: str | None,
    patterns: tuple[str, ...],
    pattern_label: str,
    findings: list[Finding],
    int_bits: int = 4,
    requires_input_scale: bool = False,
    has_config: bool = True,
    metadata: dict[str, Any] | None = None,
) -> Checkpoint:
    st_meta: dict[str, str] = {}
    raw, total, notes = parse_all(src, st_meta)
    for note in notes:
        findings.append(Finding("index_mismatch", "warning", note))
    arch = parse_arch(src.config) if src.config else None
    from .hub import is_hub_id
    remote = is_hub_id(src.given)

    def read_bytes(part):
        if remote:  # no tensor bytes over the network: shapes come from the header alone
            raise FormatError(f"{src.given}: '{part.key}' would need tensor bytes; not read remotely")
        return reader.read(part)

    with PartReader(src.root) as reader:
        asm = Assembler(raw, suffixes, expect, read_bytes, config_label, int_bits, requires_input_scale,
                        has_config)
        tensors = asm.build()
    check_against_tensors(arch, tensors)
    findings.extend(asm.findings)
    if patterns:
        findings.extend(unmatched_patterns(patterns, raw.keys(), bool(arch and arch.tie_word_embeddings),
                                           pattern_label, [n for n in tensors if not n.endswith(".weight")]))
    return Checkpoint(
        format=format_name, source=src.given, root=src.root, tensors=tensors, files=tuple(src.files),
        file_bytes=total, config=src.config, arch=arch, producer=producer, producer_version=producer_version,
        quant_method=quant_method, algorithm=algorithm, kv_cache_scheme=kv_cache_scheme,
        exclude_patterns=patterns, findings=tuple(findings),
        metadata={**(metadata or {}), "safetensors_metadata": st_meta, **({"remote": True} if remote else {})},
    )
