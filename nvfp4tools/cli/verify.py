"""``nvfp4tools verify``."""

from __future__ import annotations

from typing import Any

import click
from tabulate import tabulate

from ._output import emit, format_option


@click.command("verify")
@click.argument("path")
@click.option("--backend", default="ref", show_default=True,
              help="ref, a comma list, or 'all' (every available backend). An unavailable backend is an error.")
@click.option("--sample", type=click.IntRange(1), default=None, help="Verify a seeded sample of N quantized linears.")
@click.option("--tokens", type=click.IntRange(1), default=16, show_default=True, help="Rows M of the random activations.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--against", "against_path", default=None, metavar="DIR",
              help="The unquantized original (BF16 safetensors): weight SQNR and output error per layer.")
@click.option("--layers", "show_layers", is_flag=True, help="Table: one row per layer (JSON always has them).")
@format_option
@click.pass_context
def verify_cmd(ctx: click.Context, path: str, backend: str, sample: int | None, tokens: int, seed: int,
               against_path: str | None, show_layers: bool, fmt: str) -> None:
    """Check every quantized layer decodes to well-formed numbers and that GEMM backends compute what
    the float64 reference computes, on seeded random activations at the layer's real shape.

    \b
    Example:
      nvfp4tools verify ./gemma-4-26B-A4B-it-NVFP4 --sample 64
      nvfp4tools verify ./ckpt-nvfp4 --against ./ckpt-bf16 --format json

    Exit codes: 0 pass, 1 a layer failed (malformed scales, or a backend outside its tolerance),
    2 usage, 3 unreadable input, 4 backend unavailable.
    """
    from nvfp4tools import formats
    from nvfp4tools.kernels_ref.dispatch import resolve
    from nvfp4tools.verify import verify

    backends = resolve(backend)
    if not backends:
        from nvfp4tools.errors import BackendUnavailable
        raise BackendUnavailable(f"--backend {backend}: no backend available")
    ckpt = formats.read(path)
    against = formats.read(against_path) if against_path else None
    report = verify(ckpt, backends=backends, sample=sample, tokens=tokens, seed=seed, against=against)
    emit(report, fmt, lambda r: render_table(r, show_layers))
    ctx.exit(0 if report["verdict"] == "pass" else 1)


def _e(v: float | None) -> str:
    return "-" if v is None else f"{v:.2e}"


def render_table(r: dict[str, Any], show_layers: bool = False) -> str:
    s = r["summary"]
    lines = [f"{r['source']}: {s['n_layers']} quantized layers verified with "
             f"{', '.join(r['settings']['backends'])} (M={r['settings']['tokens']}, seed {r['settings']['seed']})"]
    tol = ", ".join(f"{b['name']} rel err <= {b['tolerance_rel']:g}" for b in r["backends"])
    lines.append(f"tolerances: {tol}; independent format-formula path <= {r['settings']['path_tolerance']:g}")
    lines.append("")
    rows = []
    for role in s["by_role"]:
        rows.append([role["role"], role["n_layers"], role["n_failed"], role.get("mean_weight_sqnr_db", "-"),
                     role.get("min_weight_sqnr_db", "-"), _e(role.get("mean_output_rel_err"))])
    lines.append(tabulate(rows, headers=["role", "layers", "failed", "mean SQNR dB", "min SQNR dB", "mean out rel err"],
                          tablefmt="simple"))
    show = r["layers"] if show_layers else [x for x in r["layers"] if x["verdict"] == "fail"][:20]
    if show:
        lines.append("")
        rows = []
        for x in show:
            b = x["backends"][0] if x["backends"] else {}
            rows.append([x["name"], "x".join(map(str, x["shape"])), _e(x.get("path_rel_err")),
                         _e(b.get("rel_err")), _e(x.get("w4a4_rel_err")), x["verdict"],
                         "; ".join(x["problems"])[:80]])
        lines.append(tabulate(rows, headers=["layer", "shape", "path err", "backend err", "W4A4 err", "verdict",
                                             "problems"], tablefmt="simple"))
    if s["worst"]:
        lines.append("")
        lines.append("worst layers vs the original:")
        for w in s["worst"][:5]:
            lines.append(f"  {w['name']}: output rel err {_e(w['output_rel_err'])}, SQNR {w['weight_sqnr_db']:.2f} dB")
    lines.append("")
    lines.append(f"verdict: {r['verdict'].upper()}")
    return "\n".join(lines)
