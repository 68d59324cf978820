"""``nvfp4tools synth``."""

from __future__ import annotations

import json

import click


@click.command("synth")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--preset", type=click.Choice(["gemma4-tiny", "gemma4-26b-a4b"]), default="gemma4-tiny",
              show_default=True, help="Architecture to build.")
@click.option("--to", "fmt", type=click.Choice(["modelopt", "compressed-tensors", "compressed-tensors-w4a16", "bf16"]),
              default="modelopt", show_default=True, help="On-disk layout to write.")
@click.option("--recipe", type=click.Choice(["all-linear", "mlp-experts", "experts-only"]), default="all-linear",
              show_default=True, help="Which linears are quantized (router, embedding and vision never are).")
@click.option("--header-only", is_flag=True, help="Sparse files: headers and per-tensor scales only (no disk cost).")
@click.option("--shards", type=click.IntRange(1, 1000), default=1, show_default=True)
@click.option("--experts", type=click.Choice(["per-expert", "fused"]), default="per-expert", show_default=True)
@click.option("--group-size", type=click.Choice(["32", "128"]), default="32", show_default=True,
              help="int4 group size for compressed-tensors-w4a16.")
@click.option("--seed", type=int, default=0, show_default=True)
def synth_cmd(out_dir: str, preset: str, fmt: str, recipe: str, header_only: bool, shards: int, experts: str,
              group_size: str, seed: int) -> None:
    """Write a synthetic checkpoint in a real on-disk layout (for tests, demos and benchmarks).

    \b
    Example:
      nvfp4tools synth /tmp/tiny --preset gemma4-tiny --to modelopt
      nvfp4tools synth /tmp/g26 --preset gemma4-26b-a4b --header-only --shards 4
    """
    from nvfp4tools.synth import synthesize

    summary = synthesize(out_dir, preset=preset, fmt=fmt, recipe=recipe, header_only=header_only, shards=shards,
                         experts=experts, seed=seed, group_size=int(group_size))
    click.echo(json.dumps(summary, indent=2))
