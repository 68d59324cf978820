"""What a command-line run skips at its end: freeing its objects one by one, and the
interpreter's teardown.

The command line (:func:`nvfp4tools.cli.main`, as the installed ``nvfp4tools`` command or
``python -m nvfp4tools``) ends with ``os._exit`` once its output is flushed and the ``atexit``
handlers have run: a ``convert`` of the 9,460-tensor bench checkpoint spent 10 ms freeing the
source and output models and the plan after its output was in place, and 3-4 ms more in the
interpreter's teardown, all on the command's critical path (bench/RESULTS.md, convert, Session 12).
Objects handed to :func:`leave` stay referenced until that exit instead of being freed as their
frames return. In a library call (``nvfp4tools.convert.convert`` from Python, tests, the CLI
run through click's ``CliRunner``) nothing is kept: :data:`KEPT` is None there.
"""

from __future__ import annotations

import contextlib
import os
import sys

KEPT: list | None = None   # a list while the process ends with exit_now()


def leave(*objs: object) -> None:
    """Keep OBJS referenced until the process exits (only when it will end with exit_now)."""
    if KEPT is not None:
        KEPT.extend(objs)


def keeping() -> bool:
    """Whether leave() keeps anything (the process will end with exit_now)."""
    return KEPT is not None


def exit_code(code: object) -> int:
    """The status sys.exit(CODE) would give (a message goes to stderr, as sys.exit prints it)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    with contextlib.suppress(Exception):
        print(code, file=sys.stderr)
    return 1


def exit_now(code: object) -> None:
    """End the process as sys.exit(CODE) would, without the interpreter's teardown: the atexit
    handlers run, stdout and stderr are flushed, then os._exit. Falls back to sys.exit while any
    other thread is still running (the teardown would wait for a non-daemon one)."""
    import atexit
    import threading

    if threading.active_count() > 1:
        sys.exit(code)
    status = exit_code(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):   # (a closed pipe, as in `nvfp4tools ... | head`)
            stream.flush()
    os._exit(status)
