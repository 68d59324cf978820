"""``nvfp4tools inspect``."""

from __future__ import annotations

import json
import re
from typing import Any

import click
from tabulate import tabulate


from ._output import emit, format_option, human_bytes, human_count


@click.command("inspect")
@click.argument("path")
@click.option("--deep", is_flag=True, help="Also scan every block scale (NaN, negative, all zero) and the codes of "
              "every quantized layer (degenerate: one repeated byte). Reads the weights.")
@click.option("--layers", "expand_layers", is_flag=True, help="One row per layer instead of collapsing identical runs.")
@click.option("--tensors", "with_tensors", is_flag=True, help="List every logical tensor with its stored parts (JSON).")
@click.option("--metadata", "with_metadata", is_flag=True,
              help="Print every key/value of the headers, like gguf-dump: GGUF metadata (chat template, "
                   "tokenizer, RoPE; arrays as length and first items), or config.json, hf_quant_config.json "
                   "and each safetensors file's __metadata__.")
@click.option("--input-format", "input_format", default=None, metavar="NAME",
              help="Skip detection and read as this format (modelopt, compressed-tensors, mxfp4, safetensors, gguf).")
@click.option("--engine", "engines", multiple=True, type=click.Choice(["vllm", "sglang", "llamacpp"]),
              help="Assess this engine (repeatable; default: all three, their refusals as warnings).")
@click.option("--gpu", "gpu_names", multiple=True, metavar="NAME",
              help="Assess on this GPU (nvfp4tools gpus; repeatable or comma-separated; default: every GPU class). "
                   "With --engine, the engine's refusals there are errors (exit 1).")
@format_option
@click.pass_context
def inspect_cmd(ctx: click.Context, path: str, deep: bool, expand_layers: bool, with_tensors: bool,
                with_metadata: bool, input_format: str | None, engines: tuple[str, ...], gpu_names: tuple[str, ...],
                fmt: str) -> None:
    """What is quantized in a checkpoint, how many bytes it holds, and whether its scales are sane.

    PATH is a checkpoint folder, a .safetensors file, or a .gguf file. Reads headers and the
    per-tensor scales only (a few bytes each); never loads weights or imports torch.

    \b
    Example:
      nvfp4tools inspect ./gemma-4-26B-A4B-it-NVFP4
      nvfp4tools inspect ./ckpt --format json | jq .coverage
      nvfp4tools inspect ./ckpt --deep --layers
      nvfp4tools inspect ./model-Q4_0.gguf --metadata
      nvfp4tools inspect ./ckpt --engine vllm --gpu l40s

    Exit codes: 0 clean, 1 a finding of severity error, 2 usage, 3 unreadable input.
    """
    from nvfp4tools import formats
    from nvfp4tools.gpus import get_gpu
    from nvfp4tools.inspect import build_report, has_errors

    gpus = [get_gpu(n.strip()) for names in gpu_names for n in names.split(",") if n.strip()] or None
    ckpt = formats.read(path, input_format)
    report = build_report(ckpt, deep=deep, expand_layers=expand_layers, with_tensors=with_tensors,
                          with_metadata=with_metadata, engines=engines or None, gpus=gpus)
    emit(report, fmt, render_table)
    ctx.exit(1 if has_errors(report) else 0)


def render_table(r: dict[str, Any]) -> str:
    s = r["summary"]
    prod = r["producer"]
    lines = []
    head = [
        ("source", r["source"]),
        ("format", r["format"] + (f"  (quant_method {r['quant_method']})" if r["quant_method"] else "")),
        ("producer", f"{prod['name'] or '-'} {prod['version'] or ''}".strip()),
        ("algorithm", r["algorithm"] or "-"),
        ("kv cache", r["kv_cache_scheme"] or "-"),
        ("files", f"{len(r['files'])} ({human_bytes(r['bytes_on_disk'])} on disk)"),
        ("parameters", f"{human_count(s['n_parameters'])} ({s['n_parameters']:,}), "
                       f"{100 * s['share_quantized']:.1f}% quantized"),
        ("tensor bytes", human_bytes(s["tensor_bytes"])),
        ("bits/weight", f"{s['bits_per_weight']:.3f} overall"
                        + (f", {s['bits_per_quantized_weight']:.3f} in quantized tensors"
                           if s["bits_per_quantized_weight"] else "")),
    ]
    m = r.get("metadata") or {}
    if m.get("general.file_type") is not None or m.get("tokenizer.ggml.model") is not None:
        head.append(("gguf", f"v{m.get('gguf_version')}, file_type {m.get('general.file_type')}, quantization "
                             f"version {m.get('general.quantization_version')}, tokenizer {m.get('tokenizer.ggml.model')} "
                             f"({m.get('vocab_size')} tokens), alignment {m.get('alignment')}"))
    a = r.get("architecture")
    if a:
        arch = (f"{a['model_type']}: {a['n_layers']} layers ({a['n_sliding_attention_layers']} sliding, "
                f"{a['n_full_attention_layers']} full), hidden {a['hidden_size']}")
        if a["n_experts"]:
            arch += f", {a['n_experts']} experts top-{a['n_experts_active']} x {a['expert_intermediate_size']}"
        head.append(("architecture", arch))
    lines.append(tabulate(head, tablefmt="plain"))
    lines.append("")
    for src in r.get("file_metadata") or ():
        lines.append(f"metadata: {_clean(src['source'])}, {len(src['entries'])} keys")
        rows = [(_clean(e["key"]), e["type"], _show(e)) for e in src["entries"]]
        lines.append(tabulate(rows, tablefmt="plain", disable_numparse=True))
        lines.append("")
    cov = [(c["role"], c["scheme"], c["n_tensors"], human_count(c["n_parameters"]),
            f"{100 * c['share_of_role']:.1f}%", human_bytes(c["nbytes"])) for c in r["coverage"]]
    lines.append(tabulate(cov, headers=["role", "scheme", "tensors", "params", "of role", "bytes"],
                          tablefmt="simple"))
    lines.append("")
    roles = [k for k in ("attention", "mlp", "shared_expert", "experts", "router")
             if any(k in row["roles"] for row in r["layers"])]
    rows = []
    for row in r["layers"]:
        span = str(row["first"]) if row["first"] == row["last"] else f"{row['first']}-{row['last']}"
        stack = row["stack"]
        rows.append([f"{stack}.{span}" if stack else span] + [row["roles"].get(k, "-") for k in roles])
    if rows:
        lines.append(tabulate(rows, headers=["layers"] + roles, tablefmt="simple"))
        lines.append("")
    lines += render_engines(r.get("engines") or ())
    if r["findings"]:
        for f in r["findings"]:
            lines.append(f"[{f['severity']}] {f['code']}: {f['message']}")
    else:
        lines.append("no findings")
    return "\n".join(lines)


_ENGINE = {"vllm": "vLLM", "sglang": "SGLang", "llamacpp": "llama.cpp"}


def render_engines(assessments) -> list[str]:
    """One line per engine and GPU class: whether it loads, and the kernel each layer kind takes."""
    if not assessments:
        return []
    rows = []
    for a in assessments:
        ccs = a["compute_capabilities"]
        gpu = "-" if not ccs else (f"sm_{ccs[0].replace('.', '')}" if len(ccs) == 1 else
                                   f"sm_{ccs[0].replace('.', '')}-sm_{ccs[-1].replace('.', '')}")
        paths = "; ".join(f"{p['weights']} {p['layer']} ({p['tensors']}): {p['kernel']} {p['compute']}"
                          for p in a["kernel_paths"]) or "-"
        rows.append((f"{_ENGINE[a['engine']]} {a['checked_against']['version']}", gpu,
                     "yes" if a["loads"] else "no", paths))
    return [tabulate(rows, headers=["engine (checked)", "GPUs", "loads", "kernel paths"], tablefmt="simple"), ""]


SHOWN_ITEMS = 8      # items of an array the table shows
SHOWN_CHARS = 160    # characters of a string the table shows (JSON carries it whole)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _clean(text: str) -> str:
    """Control characters escaped, so that a file's strings cannot drive the terminal (the reason
    gguf-dump has ``sanitize_name``)."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _scalar(v: Any) -> str:
    if isinstance(v, str):
        text = _clean(v.replace("\\", "\\\\").replace("\n", "\\n"))
        if len(text) > SHOWN_CHARS:
            return f'"{text[:SHOWN_CHARS]}"... ({len(v):,} chars)'
        return f'"{text}"'
    return _clean(json.dumps(v, ensure_ascii=False))   # true / null / numbers as JSON writes them


def _show(e: dict[str, Any]) -> str:
    v = e["value"]
    if not isinstance(v, list):
        return _scalar(v)
    n = e["length"] if e["length"] is not None else len(v)
    items = ", ".join(_scalar(x) for x in v[:SHOWN_ITEMS])
    return f"[{items}{', ...' if n > SHOWN_ITEMS else ''}] ({n:,} items)" if n > SHOWN_ITEMS else f"[{items}]"
