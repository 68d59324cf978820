"""``nvfp4tools demo``: the whole tool on a generated tiny checkpoint, no downloads."""

from __future__ import annotations

import tempfile

import click


@click.command("demo")
@click.option("--keep", type=click.Path(file_okay=False), default=None,
              help="Write the demo checkpoint here and keep it (default: a temporary folder).")
@click.pass_context
def demo_cmd(ctx: click.Context, keep: str | None) -> None:
    """Generate a tiny Gemma-4-style NVFP4 checkpoint (ModelOpt layout) and run inspect, verify and
    convert (to compressed-tensors and GGUF) on it; then size a header-only full-size
    Gemma-4-26B-A4B NVFP4 checkpoint for an RTX 4090 with estimate.

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
        ckpt = formats.read(out)
        report = build_report(ckpt)
        click.echo(render_table(report))

        from nvfp4tools.cli.estimate import render_table as render_estimate
        from nvfp4tools.estimate import Settings, estimate
        from nvfp4tools.gpus import get_gpu
        from nvfp4tools.cli.verify import render_table as render_verify
        from nvfp4tools.kernels_ref.dispatch import resolve
        from nvfp4tools.verify import verify
        click.echo("", err=True)
        click.echo(f"$ nvfp4tools verify {out} --backend ref", err=True)
        ver = verify(ckpt, backends=resolve("ref"))
        click.echo(render_verify(ver))

        from nvfp4tools.cli.convert import render_table as render_convert
        from nvfp4tools.convert import convert
        for to, dst in (("compressed-tensors", f"{tmp}/gemma4-tiny-ct"), ("gguf", f"{tmp}/gemma4-tiny.gguf")):
            click.echo("", err=True)
            click.echo(f"$ nvfp4tools convert {out} {dst} --to {to}", err=True)
            click.echo(render_convert(convert(out, dst, to)))

        big = f"{tmp}/gemma4-26b-a4b-nvfp4-header-only"
        click.echo("", err=True)
        click.echo(f"$ nvfp4tools synth {big} --preset gemma4-26b-a4b --to modelopt --header-only", err=True)
        synthesize(big, preset="gemma4-26b-a4b", fmt="modelopt", recipe="all-linear", header_only=True)
        click.echo(f"$ nvfp4tools estimate {big} --gpu rtx4090 --engine vllm --context 8192 --kv-dtype fp8", err=True)
        est = estimate(formats.read(big), get_gpu("rtx4090"), Settings(engine="vllm", context=8192, kv_dtype="fp8"))
        click.echo(render_estimate(est.report))
        ctx.exit(1 if has_errors(report) or not est.fits or ver["verdict"] != "pass" else 0)
