"""``nvfp4tools verify``."""

from __future__ import annotations

from typing import Any

import click
from tabulate import tabulate

from ._output import emit, format_option


def parse_limits(values: tuple[str, ...], option: str) -> dict[str, float]:
    """'20' or 'experts=12' (repeatable) -> {"*": 20.0, "experts": 12.0}; roles are nvfp4tools'."""
    from nvfp4tools.errors import UsageError
    from nvfp4tools.roles import ROLES

    out: dict[str, float] = {}
    for v in values:
        role, _, num = v.rpartition("=")
        role = role.strip() or "*"
        if role != "*" and role not in ROLES:
            raise UsageError(f"{option} {v!r}: unknown role {role!r}", hint=f"roles: {', '.join(ROLES)}")
        try:
            out[role] = float(num)
        except ValueError:
            raise UsageError(f"{option} {v!r}: {num!r} is not a number", hint=f"e.g. {option} 15 or "
                             f"{option} experts=12") from None
    return out


@click.command("verify")
@click.argument("path")
@click.option("--backend", default="ref", show_default=True,
              help="ref, a comma list, or 'all' (every registered backend: those that cannot run here are listed "
                   "with the reason). A backend named explicitly must run.")
@click.option("--require-backend", "required", multiple=True, metavar="NAME",
              help="Fail (exit 4) unless this backend runs here; repeatable. Added to the backends run.")
@click.option("--sample", type=click.IntRange(1), default=None, help="Verify a seeded sample of N quantized linears.")
@click.option("--tokens", type=click.IntRange(1), default=16, show_default=True, help="Rows M of the random activations.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--against", "against_path", default=None, metavar="DIR",
              help="The unquantized original (BF16 safetensors): weight SQNR and output error per layer, held to "
                   "a floor per scheme (docs/commands/verify.md).")
@click.option("--min-sqnr", "min_sqnr", multiple=True, metavar="[ROLE=]DB",
              help="With --against: weight SQNR floor in dB, for every role or one (repeatable). "
                   "Default: per scheme (nvfp4 15 dB, int4 g128 8 dB, ...).")
@click.option("--max-output-error", "max_out", multiple=True, metavar="[ROLE=]X",
              help="With --against: ceiling on the relative output error against the original (repeatable).")
@click.option("--layers", "show_layers", is_flag=True, help="Table: one row per layer (JSON always has them).")
@format_option
@click.pass_context
def verify_cmd(ctx: click.Context, path: str, backend: str, required: tuple[str, ...], sample: int | None,
               tokens: int, seed: int, against_path: str | None, min_sqnr: tuple[str, ...], max_out: tuple[str, ...],
               show_layers: bool, fmt: str) -> None:
    """Check every quantized layer decodes to well-formed numbers and that GEMM backends compute what
    the float64 reference computes, on seeded random activations at the layer's real shape.

    \b
    Example:
      nvfp4tools verify ./gemma-4-26B-A4B-it-NVFP4 --sample 64
      nvfp4tools verify ./ckpt-nvfp4 --against ./ckpt-bf16 --format json
      nvfp4tools verify ./ckpt-nvfp4 --backend all --require-backend torch

    Exit codes: 0 pass, 1 a layer failed (malformed or degenerate, a backend outside its tolerance, below
    the SQNR floor against the original), 2 usage, 3 unreadable input, 4 a required backend cannot run.
    """
    from nvfp4tools import formats
    from nvfp4tools.errors import BackendUnavailable, UsageError
    from nvfp4tools.kernels_ref.dispatch import get, require, select
    from nvfp4tools.verify import Limits, verify

    names = [n.strip() for r in required for n in r.split(",") if n.strip()]
    require(names)
    backends, unavailable = select(backend)
    for n in names:
        if n not in {b.name for b in backends}:
            backends.append(get(n))
    if not backends:
        raise BackendUnavailable(f"--backend {backend}: no backend can run here",
                                 hint="; ".join(f"{u['name']}: {u['reason']}" for u in unavailable))
    if (min_sqnr or max_out) and not against_path:
        raise UsageError("--min-sqnr and --max-output-error apply to --against", hint="pass --against ORIGINAL")
    limits = Limits(parse_limits(min_sqnr, "--min-sqnr"), parse_limits(max_out, "--max-output-error"))
    ckpt = formats.read(path)
    against = formats.read(against_path) if against_path else None
    report = verify(ckpt, backends=backends, sample=sample, tokens=tokens, seed=seed, against=against,
                    limits=limits, unavailable=unavailable)
    emit(report, fmt, lambda r: render_table(r, show_layers))
    ctx.exit(0 if report["verdict"] == "pass" else 1)


def _e(v: float | None) -> str:
    return "-" if v is None else f"{v:.2e}"


def _db(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def render_table(r: dict[str, Any], show_layers: bool = False) -> str:
    s = r["summary"]
    lines = [f"{r['source']}: {s['n_layers']} quantized layers verified with "
             f"{', '.join(r['settings']['backends'])} (M={r['settings']['tokens']}, seed {r['settings']['seed']})"]
    tol = ", ".join(f"{b['name']} rel err <= {b['tolerance_rel']:g}" for b in r["backends"] if b["state"] == "ran")
    lines.append(f"tolerances: {tol}; independent format-formula path <= {r['settings']['path_tolerance']:g}")
    for b in r["backends"]:
        if b["state"] != "ran":
            lines.append(f"backend {b['name']}: {b['state'].replace('_', ' ')} ({b['reason']})")
        elif b.get("n_skipped"):
            lines.append(f"backend {b['name']}: ran on {b['n_layers']} layers, skipped {b['n_skipped']}: "
                         + "; ".join(f"{x['reason']} ({x['n_layers']})" for x in b["skipped"][:3]))
    lines.append("")
    rows = []
    for role in s["by_role"]:
        rows.append([role["role"], role["n_layers"], role["n_failed"], _db(role.get("mean_weight_sqnr_db")),
                     _db(role.get("min_weight_sqnr_db")), _db(role.get("sqnr_floor_db")),
                     _e(role.get("mean_output_rel_err"))])
    lines.append(tabulate(rows, headers=["role", "layers", "failed", "mean SQNR dB", "min SQNR dB", "floor dB",
                                         "mean out rel err"], tablefmt="simple"))
    show = r["layers"] if show_layers else [x for x in r["layers"] if x["verdict"] == "fail"][:20]
    if show:
        lines.append("")
        rows = []
        for x in show:
            b = x["backends"][0] if x["backends"] else {}
            label = x["name"] if x.get("expert") is None or f".{x['expert']}." in x["name"] else \
                f"{x['name']} [expert {x['expert']}]"
            rows.append([label, "x".join(map(str, x["shape"])), _e(x.get("path_rel_err")),
                         _e(b.get("rel_err")), _e(x.get("w4a4_rel_err")), x["verdict"],
                         "; ".join(x["problems"])[:80]])
        lines.append(tabulate(rows, headers=["layer", "shape", "path err", "backend err", "W4A4 err", "verdict",
                                             "problems"], tablefmt="simple"))
    ag = s.get("against")
    if ag:
        lines.append("")
        med = ag["median_weight_sqnr_db"]
        lines.append(f"against {ag['source']}: {ag['n_matched']} layers matched, {ag['n_unmatched']} unmatched, "
                     f"{ag['n_below_limits']} below their limits" + ("" if med is None else f", median SQNR {med:.1f} dB"))
        for u in ag["unmatched"][:5]:
            lines.append(f"  unmatched {u['name']}: {u['reason']}")
        if ag["n_unmatched"] > 5:
            lines.append(f"  (+{ag['n_unmatched'] - 5} more unmatched: --format json lists them all)")
        if ag["message"]:
            lines.append(f"  {ag['message']}")
    if s["worst"]:
        lines.append("")
        lines.append("worst layers vs the original:")
        for w in s["worst"][:5]:
            lines.append(f"  {w['name']}: output rel err {_e(w['output_rel_err'])}, SQNR {_db(w['weight_sqnr_db'])} dB")
    lines.append("")
    lines.append(f"verdict: {r['verdict'].upper()}")
    return "\n".join(lines)
