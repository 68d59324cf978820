"""``nvfp4tools bench``."""

from __future__ import annotations

from typing import Any

import click
from tabulate import tabulate

from ._output import emit, format_option


def _ms(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, ...]:
    try:
        ms = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r}: a comma list of row counts, e.g. 1,16,128") from None
    if not ms or min(ms) < 1:
        raise click.BadParameter(f"{value!r}: a comma list of row counts >= 1, e.g. 1,16,128")
    return ms


@click.command("bench")
@click.argument("path")
@click.option("--backend", default="all", show_default=True,
              help="Backends to time: a comma list (triton, triton-w4a4, torch, ggml-cuda) or 'all' (every available one). "
                   "An unavailable backend named here is an error.")
@click.option("--ms", "ms", default="1,16,128", show_default=True, callback=_ms,
              help="Activation rows (tokens) to time, comma-separated.")
@click.option("--timing", type=click.Choice(["graph", "single"]), default="graph", show_default=True,
              help="graph: weights rotating beyond L2, calls replayed from a CUDA graph (as engines run decode); "
                   "single: do_bench median of single calls (includes host launch cost).")
@click.option("--max-shapes", type=click.IntRange(1), default=16, show_default=True)
@format_option
def bench_cmd(path: str, backend: str, ms: tuple[int, ...], timing: str, max_shapes: int, fmt: str) -> None:
    """Time this GPU's NVFP4 kernels on the checkpoint's own layer shapes and weights against cuBLAS bf16.

    For each distinct NVFP4 linear shape and each M: microseconds of cuBLAS bf16 and of every timed
    backend, the speedup over bf16, the weight bandwidth, and the memory-roofline limit (3.56x).
    Needs CUDA, torch and triton (exit 4 otherwise).

    \b
    Example:
      nvfp4tools bench ./gemma-4-26B-A4B-it-NVFP4
      nvfp4tools bench ./ckpt --backend triton --ms 1,16 --format json
    """
    from nvfp4tools import formats
    from nvfp4tools.gpubench import run_bench
    from nvfp4tools.kernels_ref.dispatch import resolve

    backends = None if backend == "all" else resolve(backend)
    ckpt = formats.read(path)
    emit(run_bench(ckpt, ms=ms, max_shapes=max_shapes, backends=backends, timing=timing), fmt, render_table)


def render_table(r: dict[str, Any]) -> str:
    names = r["backends"]
    rows = []
    for x in r["rows"]:
        cells = []
        for name in names:
            b = x["backends"].get(name)
            cells.append(f"{b['us']:.1f} ({b['speedup_vs_bf16']:.2f}x)" if b else "-")
        gbps = x["triton_weight_GBps"]
        rows.append([x["N"], x["K"], x["M"], f"{x['cublas_bf16_us']:.1f}", *cells,
                     "-" if gbps is None else f"{gbps:.0f}", x["kernel"]])
    out = [f"{r['source']} on {r['device']} ({r['timing']} timing: "
           + ("weights rotating beyond L2, CUDA-graph replay" if r["timing"] == "graph" else "do_bench single calls")
           + ")",
           tabulate(rows, headers=["N", "K", "M", "cuBLAS bf16 us", *[f"{n} us (vs bf16)" for n in names],
                                   "triton weight GB/s", "triton kernel"], tablefmt="simple"),
           f"memory-roofline limit over bf16: {r['roofline_speedup_limit']}x"]
    skipped = sorted({(n, why) for x in r["rows"] for n, why in x["skipped"].items()})
    out += [f"{n} skipped on some shapes: {why}" for n, why in skipped]
    out += [f"not timed: {n}: {why}" for n, why in r["not_timed"].items()]
    return "\n".join(out)
