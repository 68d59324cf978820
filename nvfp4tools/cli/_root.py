"""Root command group. Subcommands load lazily so ``--help`` and ``inspect`` stay light, and
every failure funnels through one place that turns it into a one-line message and an exit code."""

from __future__ import annotations

import importlib
import os
import sys
import warnings

import click

from nvfp4tools._version import __version__
from nvfp4tools.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_USAGE, Nvfp4ToolsError

_LAZY = {
    "inspect": "nvfp4tools.cli.inspect:inspect_cmd",
    "synth": "nvfp4tools.cli.synth:synth_cmd",
    "demo": "nvfp4tools.cli.demo:demo_cmd",
    "estimate": "nvfp4tools.cli.estimate:estimate_cmd",
    "gpus": "nvfp4tools.cli.estimate:gpus_cmd",
    "verify": "nvfp4tools.cli.verify:verify_cmd",
    "convert": "nvfp4tools.cli.convert:convert_cmd",
    "bench": "nvfp4tools.cli.bench:bench_cmd",
    "check": "nvfp4tools.cli.check:check_cmd",
}


def _usage_line(e: click.ClickException) -> str:
    """click's usage errors in one line: what was wrong and where the help is (click prints the
    usage synopsis and a 'Try --help' line around it; a CI log needs the reason only)."""
    ctx = getattr(e, "ctx", None)
    where = ctx.command_path if ctx is not None else "nvfp4tools"
    return " ".join(f"UsageError: {where}: {e.format_message()} (see '{where} --help')".split())


class _Root(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(_LAZY))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in _LAZY:
            mod, attr = _LAZY[name].split(":")
            return getattr(importlib.import_module(mod), attr)
        return super().get_command(ctx, name)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):  # type: ignore[override]
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, False, **extra)
        except click.ClickException as e:  # bad option or value, from click's own parsing
            click.echo(_usage_line(e), err=True)
            sys.exit(EXIT_USAGE)
        except click.Abort:
            click.echo("interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        sys.exit(rv if isinstance(rv, int) else 0)

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            with warnings.catch_warnings():
                # numpy's floating-point warnings on NaN/Inf data (inspect --deep, verify) would print
                # lines before the one-line result; the findings already report those values
                warnings.filterwarnings("ignore", r"(overflow|invalid value|divide by zero|underflow) encountered",
                                        RuntimeWarning)
                return super().invoke(ctx)
        except Nvfp4ToolsError as e:
            click.echo(e.one_line(), err=True)
            ctx.exit(e.exit_code)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(EXIT_INTERRUPTED)
        except Exception as e:  # a bug: say so in one line; traceback only on request
            if os.environ.get("NVFP4TOOLS_DEBUG"):
                raise
            click.echo(f"internal error: {type(e).__name__}: {e} (a bug in nvfp4tools; rerun with "
                       "NVFP4TOOLS_DEBUG=1 for the traceback and report it)", err=True)
            ctx.exit(EXIT_INTERNAL)


@click.group(cls=_Root, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="nvfp4tools")
def cli() -> None:
    """Inspect, size, convert and verify 4-bit (NVFP4, int4, Q4_0) LLM checkpoints.

    \b
    Example:
      nvfp4tools inspect ./gemma-4-26B-A4B-it-NVFP4
      nvfp4tools demo

    Exit codes: 0 ok, 1 a verdict (error finding, failed layer or requirement, does not fit), 2 usage,
    3 unreadable input, 4 environment, 70 bug (docs/exit-codes.md).
    """


def run(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="nvfp4tools")
    except BrokenPipeError:  # `nvfp4tools inspect x | head`
        sys.stderr.close()
        sys.exit(0)
    except KeyboardInterrupt:  # Ctrl-C outside a command (while click parses or a command module loads)
        click.echo("interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
