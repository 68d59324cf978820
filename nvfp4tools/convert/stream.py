"""Writing a file's tensor bytes: one background thread applies positioned writes and kernel
copies while the main thread decodes and encodes the next pieces.

``copy_file_range`` and ``pwrite`` release the GIL, so the Python work of a conversion overlaps
the copy. Payloads waiting in the queue are bounded (:attr:`Stream.MAX_PENDING`), so memory stays
flat whatever the model size; adjacent kernel copies are merged into one request.
"""

from __future__ import annotations

import collections
import os
import sys
import threading
import time
from typing import Any

import numpy as np

from nvfp4tools.filecopy import copy_once

from .encode import CopyFrom

ZERO_SKIP = 64 * 2**10        # chunks at least this large are checked for being all zero
COPY_REQUEST = 0x7FFFF000   # Linux's MAX_RW_COUNT: the most one copy_file_range call moves


class Stream:
    """Positioned writes and range copies into one open output file, in submission order.

    Kernel copies are merged: a copy that continues the previous one in both files extends it, and
    so does one separated from it by a gap of the same size in both files that pending small writes
    fill exactly (a converted 4-byte global between two copied tensors): the gap's source bytes ride
    along in the copy and the small writes, applied after it, overwrite them. A lossless ModelOpt
    <-> compressed-tensors conversion becomes a few large copies instead of two per tensor. A small
    write is never applied before a copy that covers its bytes.
    """

    MAX_PENDING = 128 * 2**20
    GAP = 64                 # source bytes that may ride along inside a merged copy
    SMALL = 4096             # writes up to this size wait for the copy that may cover them
    MAX_RUN = 512 * 2**20    # a merged copy this long goes to the writer thread at once, so copying
                             # starts while later tensors are still being encoded

    def __init__(self, dst_fd: int) -> None:
        self.dst = dst_fd
        self.src_fds: dict[str, int] = {}
        self.ops: collections.deque[tuple[int, Any, int]] = collections.deque()
        self.cv = threading.Condition()
        self.pending = 0
        self.error: BaseException | None = None
        self.closing = False
        self.run: list[Any] | None = None    # [path, src offset, dst pos, nbytes]: a copy being merged
        self.small: dict[int, bytes] = {}    # dst pos -> bytes: small writes held until the copy is out
        self.thread = threading.Thread(target=self._loop, name="nvfp4tools-writer", daemon=True)
        self.thread.start()

    def put(self, pos: int, data: Any) -> None:
        if isinstance(data, CopyFrom):
            r = self.run
            if r is not None and r[0] == data.path:
                gap = data.offset - (r[1] + r[3])
                if 0 <= gap <= self.GAP and pos - (r[2] + r[3]) == gap and self._covered(r[2] + r[3], gap):
                    r[3] += gap + data.nbytes
                    if r[3] >= self.MAX_RUN:
                        self._flush_run(partial=True)
                    return
            self._flush_run()
            self.run = [data.path, data.offset, pos, data.nbytes]
            if data.nbytes >= self.MAX_RUN:
                self._flush_run(partial=True)
            return
        if (self.run is not None or self.small) and len(data) <= self.SMALL:
            self.small[pos] = bytes(data)
            return
        self._flush_run()
        self._submit(pos, data)

    def _covered(self, start: int, n: int) -> bool:
        q = start
        while q < start + n:
            b = self.small.get(q)
            if b is None:
                return False
            q += len(b)
        return q == start + n

    def _flush_run(self, partial: bool = False) -> None:
        """Submit the merged copy, then the small writes. PARTIAL keeps back the small writes past
        the copy's end: a later copy may still ride over their bytes, so they must follow it."""
        end = None
        if self.run is not None:
            path, off, pos, n = self.run
            self.run = None
            self._submit(pos, CopyFrom(path, off, n))
            end = pos + n
        if partial and end is not None:
            for q in [q for q in self.small if q < end]:
                self._submit(q, self.small.pop(q))
            return
        for q, b in self.small.items():
            self._submit(q, b)
        self.small.clear()

    def _submit(self, pos: int, data: Any) -> None:
        size = 0 if isinstance(data, CopyFrom) else len(data)
        with self.cv:
            while self.pending and self.pending + size > self.MAX_PENDING and self.error is None:
                self.cv.wait()
            if self.error is not None:
                raise self.error
            self.ops.append((pos, data, size))
            self.pending += size
            self.cv.notify_all()

    def _apply(self, pos: int, data: Any) -> None:
        if not isinstance(data, CopyFrom):
            view = memoryview(data).cast("B")
            # every writer extends its file to full size before streaming (truncate), so an unwritten
            # range reads as zeros: an all-zero chunk stays a hole. Sparse input (header-only test
            # checkpoints) then gives sparse output; real weights have no all-zero megabyte ranges.
            if len(view) >= ZERO_SKIP and not np.frombuffer(view, np.uint8).any():
                return
            done = 0
            while done < len(view):
                done += os.pwrite(self.dst, view[done:], pos + done)
            return
        src = self.src_fds.get(data.path)
        if src is None:
            src = self.src_fds[data.path] = os.open(data.path, os.O_RDONLY)
        done = 0
        while done < data.nbytes:
            done += copy_once(src, self.dst, min(COPY_REQUEST, data.nbytes - done), data.offset + done, pos + done,
                              data.path)

    def _loop(self) -> None:
        while True:
            with self.cv:
                while not self.ops and not self.closing:
                    self.cv.wait()
                if not self.ops:
                    return
                pos, data, size = self.ops.popleft()
            try:
                if self.error is None:
                    self._apply(pos, data)
            except BaseException as e:  # noqa: BLE001  (re-raised in the main thread)
                with self.cv:
                    self.error = e
            with self.cv:
                self.pending -= size
                self.cv.notify_all()

    def close(self, abort: bool = False) -> None:
        """Wait until every operation is applied (ABORT: drop the rest) and re-raise the thread's error."""
        if not abort:
            try:
                self._flush_run()
            except BaseException:
                self._stop(abort=True)
                raise
        self._stop(abort)

    def _stop(self, abort: bool) -> None:
        with self.cv:
            if abort:
                self.ops.clear()
                self.pending = 0
            self.closing = True
            self.cv.notify_all()
        self.thread.join()
        for fd in self.src_fds.values():
            os.close(fd)
        self.src_fds.clear()
        if self.error is not None and not abort:
            raise self.error


class Progress:
    """A progress line on a terminal's stderr (nothing otherwise)."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.t0 = total, 0, time.monotonic()
        self.tty = sys.stderr.isatty()
        self.shown = 0.0

    def add(self, n: int) -> None:
        self.done += n
        if not self.tty:
            return
        now = time.monotonic()
        if now - self.shown < 0.1 and self.done < self.total:
            return
        self.shown = now
        el = now - self.t0
        rate = self.done / el if el > 0 else 0
        eta = (self.total - self.done) / rate if rate else 0
        pct = 100 * self.done / self.total if self.total else 100
        sys.stderr.write(f"\rconverting {pct:5.1f}%  {self.done / 2**20:,.0f}/{self.total / 2**20:,.0f} MiB  "
                         f"{rate / 2**20:,.0f} MiB/s  ETA {eta:4.0f}s ")
        sys.stderr.flush()

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")


def write_actions(path: str, base: int, offsets: dict[str, int], actions, view, lossy: list,
                  progress: Progress, skip: frozenset[str] = frozenset()) -> None:
    """Stream ACTIONS' bytes into the file at PATH (already holding its header): output part KEY
    starts at BASE + OFFSETS[KEY]. Parts named in SKIP are not written."""
    from .encode import chunks

    fd = os.open(path, os.O_WRONLY)
    stream = Stream(fd)
    try:
        for a in actions:
            for o, rel, data in chunks(a, view, lossy):
                if o.key in skip:
                    continue
                stream.put(base + offsets[o.key] + rel, data)
                progress.add(len(data))
        stream.close()
    except BaseException:
        stream.close(abort=True)
        raise
    finally:
        os.close(fd)
