"""``nvfp4tools check``."""

from __future__ import annotations

import os

import click

from ._output import emit, format_option


@click.command("check")
@click.argument("path")
@click.option("--policy", "policy_path", default=None, metavar="FILE",
              help="Policy TOML (or a pyproject.toml with [tool.nvfp4tools]). Default: the built-in defaults "
                   "(no error finding, the checkpoint's own claims hold, sampled layers verify).")
@click.option("--against", "against_path", default=None, metavar="DIR",
              help="The unquantized original; overrides the policy's numerics.against.")
@click.option("--junit", "junit_path", default=None, metavar="FILE", help="Also write JUnit XML (one test per requirement).")
@format_option
@click.pass_context
def check_cmd(ctx: click.Context, path: str, policy_path: str | None, against_path: str | None,
              junit_path: str | None, fmt: str) -> None:
    """Gate a checkpoint before deployment: every requirement of a policy, each with the value
    measured and its limit. Composes inspect (findings, quantization coverage), estimate
    (deployment targets) and verify (numerics).

    PATH is a checkpoint folder, file or Hub id (a Hub id is read from headers only; what that
    leaves unchecked is listed). Under GitHub Actions (GITHUB_ACTIONS=true) failures also become
    annotations and a job summary.

    \b
    Example:
      nvfp4tools check ./gemma-4-26B-A4B-it-NVFP4
      nvfp4tools check ./ckpt --policy nvfp4tools.toml --junit check.xml
      nvfp4tools check ./ckpt --policy pyproject.toml --against ./ckpt-bf16 --format json

    Exit codes: 0 every requirement passed, 1 a requirement failed, 2 usage or a bad policy (the
    message names the file, line and key), 3 unreadable input or Hub/network failure.
    """
    from nvfp4tools.check import outputs
    from nvfp4tools.check.gate import run
    from nvfp4tools.check.policy import Policy, load

    policy = load(policy_path) if policy_path else Policy()
    report = run(path, policy, against_path)
    emit(report, fmt, outputs.render_table)
    if junit_path:
        with open(junit_path, "wb") as fh:
            fh.write(outputs.junit_xml(report))
    if os.environ.get("GITHUB_ACTIONS") == "true":
        if fmt == "table":  # stdout carries JSON otherwise; the job summary still gets everything
            for line in outputs.github_annotations(report):
                click.echo(line)
        summary = os.environ.get("GITHUB_STEP_SUMMARY")
        if summary:
            with open(summary, "a", encoding="utf-8") as fh:
                fh.write(outputs.markdown_summary(report))
    ctx.exit(0 if report["verdict"] == "pass" else 1)
