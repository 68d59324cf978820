"""``nvfp4tools demo``: the whole tool on a bundled tiny checkpoint, no downloads."""

from __future__ import annotations

import tempfile

import click


@click.command("demo")
@click.option("--keep", type=click.Path(file_okay=False), default=None,
              help="Write the demo checkpoint here and keep it (default: a temporary folder).")
@click.pass_context
def demo_cmd(ctx: click.Context, keep: str | None) -> None:
    """Build a tiny Gemma-4-style NVFP4 checkpoint (ModelOpt layout) and run every command on it.

    \b
    Example:
      nvfp4tools demo
    """
    from nvfp4tools import formats
    from nvfp4tools.cli.inspect import render_table
    from nvfp4tools.inspect import build_report, has_errors
    from nvfp4tools.synth import synthesize

    with tempfile.TemporaryDirectory(prefix="nvfp4tools-demo-") as tmp:
        out = keep or f"{tmp}/gemma4-tiny-nvfp4"
        click.echo(f"$ nvfp4tools synth {out} --preset gemma4-tiny --to modelopt --recipe all-linear", err=True)
        synthesize(out, preset="gemma4-tiny", fmt="modelopt", recipe="all-linear")
        click.echo(f"$ nvfp4tools inspect {out}", err=True)
        report = build_report(formats.read(out))
        click.echo(render_table(report))
        ctx.exit(1 if has_errors(report) else 0)
