"""Where an output is written and how it appears: a hidden temporary sibling of the destination,
renamed into place only once it is complete and verified, and every report it promises written.

The temporary name carries the process id (``.NAME.nvfp4tools-tmp-PID``). A run that was killed
leaves one behind; the next conversion to the same destination removes those whose process is
gone (never one a live conversion is writing).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import threading
from typing import Callable

from nvfp4tools.errors import UsageError

# the temporary output, and the replaced destination publish() parks beside it for a moment
_TMP = re.compile(r"^\.(?P<name>.+)\.nvfp4tools-tmp-(?P<pid>\d+)(?P<old>\.old)?$")


def temp_path_for(dst: str) -> str:
    dst_real = os.path.realpath(dst)
    parent = os.path.dirname(dst_real) or "."
    return os.path.join(parent, f".{os.path.basename(dst_real)}.nvfp4tools-tmp-{os.getpid()}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(dst: str) -> list[str]:
    """Remove temporary siblings of DST left by conversions whose process is gone."""
    dst_real = os.path.realpath(dst)
    parent = os.path.dirname(dst_real) or "."
    removed = []
    try:
        names = os.listdir(parent)
    except OSError:
        return removed
    for n in names:
        m = _TMP.match(n)
        if m is None or m.group("name") != os.path.basename(dst_real):
            continue
        pid = int(m.group("pid"))
        if pid != os.getpid() and _alive(pid):
            continue
        full = os.path.join(parent, n)
        if m.group("old") and not os.path.lexists(dst_real):
            # killed between publish()'s two renames: the previous output is all there is; put it back
            os.rename(full, dst_real)
            continue
        if os.path.isdir(full) and not os.path.islink(full):
            shutil.rmtree(full, ignore_errors=True)
        else:
            try:
                os.remove(full)
            except OSError:
                pass
        removed.append(full)
    return removed


def terminate_as_interrupt() -> Callable[[], None]:
    """Until the returned function is called, SIGTERM raises KeyboardInterrupt in the main thread, so
    a terminated conversion removes its temporary output as Ctrl-C does (SIGKILL cannot be caught:
    :func:`remove_stale` clears what it leaves on the next run). Outside the main thread (the
    library called from a worker thread) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, on_term)
    return lambda: signal.signal(signal.SIGTERM, old)


def check_destination(src_path: str, dst: str, force: bool, *, suffix: str | None, existing: bool = True) -> None:
    """Refuse DST when it is the source, inside it or holds it (replacing DST with --force removes
    the old DST whole, so a source inside it would be deleted), lacks the target's file suffix, or
    (EXISTING) exists without FORCE."""
    src_real = os.path.realpath(src_path)
    dst_real = os.path.realpath(dst)
    if src_real == dst_real or dst_real.startswith(src_real.rstrip(os.sep) + os.sep):
        raise UsageError(f"destination {dst} is the source or inside it", hint="choose a new path")
    if src_real.startswith(dst_real.rstrip(os.sep) + os.sep):
        raise UsageError(f"destination {dst} holds the source {src_path}: replacing it would delete the source",
                         hint="choose a path outside the source's folders")
    if suffix is not None and not dst.endswith(suffix):
        raise UsageError(f"destination {dst} does not end in {suffix}",
                         hint=f"name the output file, e.g. {dst.rstrip(os.sep)}{suffix}")
    if suffix is None and dst.endswith(".gguf"):
        raise UsageError(f"destination {dst} ends in .gguf but the target writes a folder",
                         hint="name a folder, or pass --to gguf")
    parent = os.path.dirname(dst_real) or "."
    if not os.path.isdir(parent):
        raise UsageError(f"destination {dst}: folder {parent} does not exist", hint="create it first")
    if existing and os.path.lexists(dst) and not force:
        raise UsageError(f"{dst} already exists", hint="pass --force to replace it, or choose a new path")


def publish(tmp: str, dst: str) -> None:
    """Move the finished TMP (a folder, or a folder holding the one output file) to DST atomically;
    a replaced DST is removed only after the new one is in place."""
    dst_real = os.path.realpath(dst)
    old = None
    if os.path.lexists(dst_real):
        old = tmp + ".old"
        os.rename(dst_real, old)
    try:
        os.rename(tmp, dst_real)
    except BaseException:
        if old is not None:
            os.rename(old, dst_real)
        raise
    if old is not None:
        if os.path.isdir(old) and not os.path.islink(old):
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.remove(old)
