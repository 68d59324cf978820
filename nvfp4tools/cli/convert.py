"""``nvfp4tools convert``."""

from __future__ import annotations

import errno
from typing import Any

import click
from tabulate import tabulate

from ._output import emit, format_option, human_bytes


@click.command("convert")
@click.argument("src")
@click.argument("dst")
@click.option("--to", "to", type=click.Choice(["modelopt", "compressed-tensors", "gguf", "safetensors"]), required=True,
              help="Target format; safetensors: plain unquantized tensors (e.g. a GGUF's BF16 weights).")
@click.option("--experts", type=click.Choice(["per-expert", "fused"]), default=None,
              help="Expert layout of safetensors outputs (default: as in the source).")
@click.option("--allow-lossy", is_flag=True, help="Allow requantization where no exact mapping exists.")
@click.option("--quantize", type=click.Choice(["nvfp4", "int4", "q4_0"]), default=None,
              help="With --allow-lossy: quantize unquantized linears (attention, MLP, experts) with the reference "
                   "quantizers (NVFP4 W4A16, ModelOpt-exact; int4 group 32; Q4_0 for --to gguf, ggml's "
                   "reference). Per-tensor error goes to the report (nvfp4tools_conversion_report.json).")
@click.option("--dry-run", is_flag=True, help="Print the plan (tensors, bytes, exact/lossy) and write nothing.")
@click.option("--force", is_flag=True, help="Replace DST if it exists (only after the new one is complete).")
@click.option("--max-shard-size", default=None,
              help="Split safetensors output into shards of at most this size (default: shard as the source is "
                   "sharded; a GGUF source in 5GB shards).")
@click.option("--verify", "verify", type=click.Choice(["sampled", "full"]), default="sampled", show_default=True,
              help="How parts copied byte for byte are re-checked: header, length and 4 KiB windows at both "
                   "ends and every 64 MiB (sampled), or every byte (full). Transformed parts are always "
                   "compared in full.")
@format_option
def convert_cmd(src: str, dst: str, to: str, experts: str | None, allow_lossy: bool, quantize: str | None,
                dry_run: bool, force: bool, max_shard_size: str | None, verify: str, fmt: str) -> None:
    """Convert between ModelOpt NVFP4, compressed-tensors (NVFP4, W4A16) and GGUF (NVFP4, Q4_0),
    bit-exact wherever the formats allow (codes and block-scale bytes copied, globals remapped).

    The output is written to a temporary sibling folder, verified tensor by tensor against the
    source (--verify), and renamed into place only when complete.

    \b
    Example:
      nvfp4tools convert ./gemma-4-NVFP4 ./gemma-4-NVFP4-ct --to compressed-tensors
      nvfp4tools convert ./ckpt-ct ./ckpt.gguf --to gguf --dry-run
    """
    max_bytes = None
    if max_shard_size is not None:
        from nvfp4tools.gpus import parse_size
        max_bytes = parse_size(max_shard_size)
    try:
        from nvfp4tools.convert import convert
        report = convert(src, dst, to, experts=experts, allow_lossy=allow_lossy, dry_run=dry_run, force=force,
                         max_shard_bytes=max_bytes, quantize=quantize, verify=verify)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            from nvfp4tools.errors import FormatError
            raise FormatError(f"writing {dst}: {e.strerror}", hint="free disk space and run again") from None
        raise
    emit(report, fmt, render_table)


def render_table(r: dict[str, Any]) -> str:
    lines = [f"{r['source']} ({r['from']}) -> {r['to']}: {r['n_output_tensors']} tensors, "
             f"{human_bytes(r['output_tensor_bytes'])}, {'lossless' if r['lossless'] else 'LOSSY (requantized)'}"]
    lines.append(tabulate([[a["action"], "exact" if a["exact"] else "requantized", a["tensors"]] for a in r["actions"]],
                          headers=["action", "", "tensors"], tablefmt="simple"))
    for n in r.get("notes", []):
        lines.append(f"note: {n}")
    if r.get("lossy"):
        rows = sorted(r["lossy"], key=lambda x: (x["sqnr_db"] is None, x["sqnr_db"] or 0))[:8]
        where = f" (all in {r['report_file']})" if r.get("report_file") else " (all in --format json)"
        lines.append(f"requantized tensors, worst first{where}:")
        lines.append(tabulate([[x["tensor"], x["to"], "-" if x["max_abs_err"] is None else f"{x['max_abs_err']:.3g}",
                                "-" if x["rel_rms_err"] is None else f"{x['rel_rms_err']:.3g}",
                                "-" if x["sqnr_db"] is None else f"{x['sqnr_db']:.2f}"] for x in rows],
                              headers=["tensor", "to", "max abs", "rel RMS", "SQNR dB"], tablefmt="simple"))
    if "destination" in r:
        how = "byte-copied parts sampled; --verify full checks every byte" \
            if r.get("verification") == "sampled" else "every byte"
        exact = r["verified_tensors"]
        if r["lossless"]:
            lines.append(f"wrote {r['destination']}: {', '.join(r['files'])}; {exact} tensors verified bit for bit "
                         f"against the source ({how})")
        else:
            lines.append(f"wrote {r['destination']}: {', '.join(r['files'])}; {len(r.get('lossy', []))} tensors "
                         f"requantized (errors above), the other {exact} verified bit for bit ({how})")
    else:
        lines.append("dry run: nothing written")
    return "\n".join(lines)
