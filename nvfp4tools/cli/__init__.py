"""The ``nvfp4tools`` command line. The click group lives in :mod:`nvfp4tools.cli._root`."""

from __future__ import annotations

from typing import Any


def main(argv: list[str] | None = None) -> None:
    try:
        from nvfp4tools.cli._root import run
    except KeyboardInterrupt:   # Ctrl-C while the CLI is still importing: one line, like everywhere else
        import sys
        sys.stderr.write("interrupted\n")
        raise SystemExit(130) from None
    run(argv)


def __getattr__(name: str) -> Any:  # `from nvfp4tools.cli import cli` (tests, embedding)
    import importlib
    _root = importlib.import_module("nvfp4tools.cli._root")
    try:
        return getattr(_root, name)
    except AttributeError:
        raise AttributeError(f"module 'nvfp4tools.cli' has no attribute {name!r}") from None
