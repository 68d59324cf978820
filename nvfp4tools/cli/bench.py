"""``nvfp4tools bench``."""

from __future__ import annotations

from typing import Any

import click
from tabulate import tabulate

from ._output import emit, format_option


@click.command("bench")
@click.argument("path")
@click.option("--max-shapes", type=click.IntRange(1), default=16, show_default=True)
@format_option
def bench_cmd(path: str, max_shapes: int, fmt: str) -> None:
    """Time this GPU's NVFP4 kernels on the checkpoint's own layer shapes and weights against cuBLAS bf16.

    For each distinct NVFP4 linear shape: M = 1, 16, 128; microseconds, speedup over bf16, weight
    bandwidth, and the memory-roofline limit (3.56x). Needs CUDA, torch and triton (exit 4 otherwise).

    \b
    Example:
      nvfp4tools bench ./gemma-4-26B-A4B-it-NVFP4
    """
    from nvfp4tools import formats
    from nvfp4tools.gpubench import run_bench

    ckpt = formats.read(path)
    emit(run_bench(ckpt, max_shapes=max_shapes), fmt, render_table)


def render_table(r: dict[str, Any]) -> str:
    rows = [[x["N"], x["K"], x["M"], f"{x['cublas_bf16_us']:.1f}", f"{x['triton_us']:.1f}",
             f"{x['speedup_vs_bf16']:.2f}x", f"{x['triton_weight_GBps']:.0f}"] for x in r["rows"]]
    return (f"{r['source']} on {r['device']}\n" +
            tabulate(rows, headers=["N", "K", "M", "cuBLAS bf16 us", "triton us", "vs bf16", "weight GB/s"],
                     tablefmt="simple") + f"\nmemory-roofline limit over bf16: {r['roofline_speedup_limit']}x")
