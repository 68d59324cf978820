"""The ``nvfp4tools`` command line. The click group lives in :mod:`nvfp4tools.cli._root`; this
entry point first starts the bulk copy of a lossless ``convert`` (:func:`nvfp4tools.early_copy.prestart`),
before click and the converter are imported: the copy is the conversion's critical path, and those
imports took 60-70 ms of it."""

from __future__ import annotations

import sys

TYPE_CHECKING = False   # (importing typing costs 5-18 ms, all of it before the copy could start)
if TYPE_CHECKING:
    from typing import Any


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["convert"]:
        from nvfp4tools.early_copy import prestart
        prestart(args[1:])
    from nvfp4tools.cli._root import run
    if argv is not None:   # called from Python: return or raise SystemExit, as click does
        run(argv)
        return
    # the installed command (or python -m): once the output is flushed and the atexit handlers
    # have run, os._exit, without freeing what the command left behind (nvfp4tools/_teardown.py)
    from nvfp4tools import _teardown
    _teardown.KEPT = []
    try:
        run(argv)
        code: object = 0
    except SystemExit as e:
        code = e.code
    _teardown.exit_now(code)


def __getattr__(name: str) -> Any:  # `from nvfp4tools.cli import cli` (tests, embedding)
    import importlib
    _root = importlib.import_module("nvfp4tools.cli._root")
    try:
        return getattr(_root, name)
    except AttributeError:
        raise AttributeError(f"module 'nvfp4tools.cli' has no attribute {name!r}") from None
