"""One output sink: ``--format table|json``. Data goes to stdout, messages to stderr.
Tables are rendered from the same dict the JSON holds, so the two cannot disagree."""

from __future__ import annotations

import json
from typing import Any, Callable

import click

FORMATS = ("table", "json")


def format_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
                        help="Output format: a human table, or stable JSON (schema in docs/schema/).")(f)


def emit(report: dict[str, Any], fmt: str, render_table: Callable[[dict[str, Any]], str]) -> None:
    if fmt == "json":
        click.echo(json.dumps(report, indent=2, allow_nan=False, default=_json_default))
    else:
        click.echo(render_table(report))


def _json_default(o: Any) -> Any:
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    gib = n / 2**30
    if gib >= 1:
        return f"{gib:.2f} GiB ({n / 1e9:.2f} GB)"
    mib = n / 2**20
    if mib >= 1:
        return f"{mib:.1f} MiB"
    return f"{n:,} B"


def human_count(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.3f}{unit}" if unit == "B" else f"{n / div:.2f}{unit}"
    return str(n)
