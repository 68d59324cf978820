"""Writing a file's tensor bytes: one background thread applies kernel copies and large
positioned writes while the main thread decodes and encodes the next pieces, applies the small
writes, and checks what is already final.

``copy_file_range`` and ``pwrite`` release the GIL, so the Python work of a conversion overlaps
the copy. Payloads waiting in the queue are bounded (:attr:`Stream.MAX_PENDING`), so memory stays
flat whatever the model size; adjacent kernel copies are merged into one request.

The writer thread leaves small writes (a converted 4-byte scale) to the main thread: it hands each
group of them over once every operation submitted before them is done, and goes on copying. Each
small write would otherwise cost the writer thread a GIL hand-over, up to the interpreter's switch
interval whenever the main thread is busy in Python (re-reading the output, checking it), which
would hold up the copies behind it.
"""

from __future__ import annotations

import collections
import os
import sys
import threading
import time
from typing import Any, Callable

from nvfp4tools.filecopy import copy_once

from .encode import CopyFrom

ZERO_SKIP = 64 * 2**10        # chunks at least this large are checked for being all zero
COPY_ALIGN = 64 * 2**10       # copy_file_range runs ~25% faster from 64 KiB boundaries on both sides (see Stream._apply)
COPY_REQUEST = 0x7FFF0000     # the most one copy_file_range call moves (Linux's MAX_RW_COUNT, 0x7FFFF000), in
                              # whole COPY_ALIGN units so that every request after the first starts aligned


class _Small(list):
    """Small writes [(dst pos, bytes)], one queue entry: the main thread applies them."""


class Stream:
    """Positioned writes and range copies into one open output file, in submission order.

    Kernel copies are merged: a copy that continues the previous one in both files extends it, and
    so does one separated from it by a gap of the same size in both files that pending small writes
    fill exactly (a converted 4-byte global between two copied tensors): the gap's source bytes ride
    along in the copy and the small writes, applied after it, overwrite them. A lossless ModelOpt
    <-> compressed-tensors conversion becomes a few large copies instead of two per tensor. A small
    write is never applied before a copy that covers its bytes.

    Every operation is applied once every operation submitted before it is done, except that the
    main thread applies small writes (:meth:`apply_small`) while the writer thread goes on with the
    operations after them: no two operations write the same byte but a copy and the small writes
    that overwrite the gap it rode over, and those are ordered. :meth:`mark` names the point where
    everything submitted so far (an action's bytes) is written; :meth:`wait_mark` waits for it.
    """

    MAX_PENDING = 128 * 2**20
    GAP = 64                 # source bytes that may ride along inside a merged copy
    SMALL = 4096             # writes up to this size wait for the copy that may cover them
    MAX_RUN = 512 * 2**20    # a merged copy this long goes to the writer thread at once, so copying
                             # starts while later tensors are still being encoded
    TAIL_RUN = 16 * 2**20    # near the file's end a merged copy goes out once it is as long as what
                             # follows it (halving down to this): the tensors of each are checked
                             # while the next is copied, so little checking is left after the last
    end: int | None = None   # the file's length, when known (None: runs of MAX_RUN to the end)
    filled: tuple[int, int] = (0, 0)   # a range of the file already holding bytes (Early): written in
                                       # full, never left as a hole where a chunk is all zero

    def __init__(self, dst_fd: int, end: int | None = None) -> None:
        self.dst = dst_fd
        self.end = end
        self.src_fds: dict[str, int] = {}
        self.ops: collections.deque[tuple[int, Any, int]] = collections.deque()
        self.cv = threading.Condition()
        self.pending = 0
        self.error: BaseException | None = None
        self.closing = False
        self.run: list[Any] | None = None    # [path, src offset, dst pos, nbytes]: a copy being merged
        self.small: dict[int, bytes] = {}    # dst pos -> bytes: small writes held until the copy is out
        self.submitted = 0                   # queue entries submitted
        self.done = 0                        # queue entries the writer thread is through with
        self.ready: list[tuple[_Small, int]] = []   # small writes whose turn has come, for the main thread
        self.marks: dict[Any, int] = {}      # mark -> entries that must be done before it holds
        self.unresolved: list[Any] = []      # marks whose bytes are still held (run, small)
        self.thread = threading.Thread(target=self._loop, name="nvfp4tools-writer", daemon=True)
        self.thread.start()

    # -- submitting (main thread) ----------------------------------------------------------------
    def put(self, pos: int, data: Any) -> None:
        if isinstance(data, CopyFrom):
            r = self.run
            if r is not None and r[0] == data.path:
                gap = data.offset - (r[1] + r[3])
                if 0 <= gap <= self.GAP and pos - (r[2] + r[3]) == gap and self._covered(r[2] + r[3], gap):
                    r[3] += gap + data.nbytes
                    if self._long(r):
                        self._flush_run(partial=True)
                    return
            self._flush_run()
            self.run = [data.path, data.offset, pos, data.nbytes]
            if self._long(self.run):
                self._flush_run(partial=True)
            return
        if (self.run is not None or self.small) and len(data) <= self.SMALL:
            self.small[pos] = bytes(data)
            return
        self._flush_run()
        if len(data) <= self.SMALL:
            self._submit_small([(pos, bytes(data))])
        else:
            self._submit(pos, data)

    def _long(self, r: list[Any]) -> bool:
        """Whether merged copy R is to go to the writer thread now (MAX_RUN; TAIL_RUN near the end)."""
        n = r[3]
        if n >= self.MAX_RUN:
            return True
        return self.end is not None and n >= max(self.TAIL_RUN, self.end - (r[2] + n))

    def mark(self, key: Any) -> None:
        """Name the point where everything put so far is written (see :meth:`wait_mark`)."""
        if self.run is None and not self.small:
            self.marks[key] = self.submitted
        else:
            self.unresolved.append(key)

    def _resolve(self) -> None:
        if self.unresolved and self.run is None and not self.small:
            for k in self.unresolved:
                self.marks[k] = self.submitted
            self.unresolved.clear()

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
            inside = [q for q in self.small if q < end]
            if inside:
                self._submit_small([(q, self.small.pop(q)) for q in inside])
        elif self.small:
            self._submit_small(list(self.small.items()))
            self.small.clear()
        self._resolve()

    def _submit_small(self, writes: list[tuple[int, bytes]]) -> None:
        self._submit(0, _Small(writes))

    def _submit(self, pos: int, data: Any) -> None:
        size = 0 if isinstance(data, CopyFrom) else (sum(len(b) for _, b in data) if isinstance(data, _Small)
                                                     else len(data))
        if self.ready:
            self.apply_small()
        with self.cv:
            while self.pending and self.pending + size > self.MAX_PENDING and self.error is None:
                if self.ready:
                    self.cv.release()
                    try:
                        self.apply_small()
                    finally:
                        self.cv.acquire()
                    continue
                self.cv.wait()
            if self.error is not None:
                raise self.error
            self.ops.append((pos, data, size))
            self.submitted += 1
            self.pending += size
            self.cv.notify_all()

    # -- the main thread's share -----------------------------------------------------------------
    def apply_small(self) -> None:
        """Apply the small writes whose turn has come (main thread)."""
        with self.cv:
            batches, self.ready = self.ready, []
        size = 0
        try:
            for writes, n in batches:
                for pos, b in writes:
                    _pwrite_all(self.dst, b, pos)
                size += n
        finally:
            with self.cv:
                self.pending -= size
                self.cv.notify_all()

    def wait_mark(self, key: Any) -> bool:
        """Wait until everything put before :meth:`mark` KEY is written (False: no such mark);
        re-raises the writer thread's error."""
        want = self.marks.get(key)
        if want is None:
            return False
        while True:
            with self.cv:
                while self.done < want and self.error is None and not self.ready:
                    self.cv.wait()
                if self.error is not None:
                    raise self.error
                reached = self.done >= want
            self.apply_small()
            if reached:
                return True

    # -- the writer thread -----------------------------------------------------------------------
    def _apply(self, pos: int, data: Any) -> None:
        if not isinstance(data, CopyFrom):
            view = memoryview(data).cast("B")
            # every writer extends its file to full size before streaming (truncate), so an unwritten
            # range reads as zeros: an all-zero chunk stays a hole. Sparse input (header-only test
            # checkpoints) then gives sparse output; real weights have no all-zero megabyte ranges.
            lo, hi = self.filled
            if len(view) >= ZERO_SKIP and not (pos < hi and pos + len(view) > lo):
                import numpy as np   # (only bytes the main thread encoded come here: it has numpy loaded)

                if not np.frombuffer(view, np.uint8).any():
                    return
            done = 0
            while done < len(view):
                done += os.pwrite(self.dst, view[done:], pos + done)
            return
        src = self.src_fds.get(data.path)
        if src is None:
            src = self.src_fds[data.path] = os.open(data.path, os.O_RDONLY)
        # where both sides sit at the same offset within COPY_ALIGN, the first request stops at the
        # boundary and the rest is copied aligned (page cache copies measured 1.32 s unaligned vs 1.0 s
        # aligned for this 2.9 GiB file on ext4, Linux 6.18; bench/RESULTS.md "convert")
        aligned = (pos - data.offset) % COPY_ALIGN == 0
        done = 0
        while done < data.nbytes:
            head = -(pos + done) % COPY_ALIGN if aligned else 0
            done += copy_once(src, self.dst, min(head or COPY_REQUEST, data.nbytes - done), data.offset + done,
                              pos + done, data.path)

    def _loop(self) -> None:
        while True:
            with self.cv:
                while not self.ops and not self.closing:
                    self.cv.wait()
                if not self.ops:
                    return
                pos, data, size = self.ops.popleft()
                if isinstance(data, _Small):   # every entry before it is done: its turn has come
                    if self.error is None:
                        self.ready.append((data, size))
                    else:
                        self.pending -= size
                    self.done += 1
                    self.cv.notify_all()
                    continue
            try:
                if self.error is None:
                    self._apply(pos, data)
            except BaseException as e:  # noqa: BLE001  (re-raised in the main thread)
                with self.cv:
                    self.error = e
            with self.cv:
                self.pending -= size
                self.done += 1
                self.cv.notify_all()

    # -- the end ---------------------------------------------------------------------------------
    def flush(self) -> None:
        """Submit everything still held (after the last put; every mark is then resolved)."""
        self._flush_run()

    def close(self, abort: bool = False) -> None:
        """Wait until every operation is applied (ABORT: drop the rest) and re-raise the thread's error."""
        if not abort:
            try:
                self._flush_run()
                self._drain()
            except BaseException:
                self._stop(abort=True)
                raise
        self._stop(abort)

    def _drain(self) -> None:
        """Wait for the writer thread to be through the queue, applying small writes meanwhile."""
        while True:
            with self.cv:
                while self.done < self.submitted and self.error is None and not self.ready:
                    self.cv.wait()
                if self.error is not None:
                    raise self.error
                through = self.done >= self.submitted
            self.apply_small()
            if through:
                return

    def _stop(self, abort: bool) -> None:
        with self.cv:
            if abort:
                self.ops.clear()
                self.ready.clear()
                self.pending = 0
            self.closing = True
            self.cv.notify_all()
        self.thread.join()
        for fd in self.src_fds.values():
            os.close(fd)
        self.src_fds.clear()
        if self.error is not None and not abort:
            raise self.error


def header_pad(data_start: int, offsets: dict[str, int], actions, view) -> int:
    """Bytes of padding a writer may add to a file header ending at DATA_START (where output part
    KEY will start at DATA_START + OFFSETS[KEY]) so that the first part copied byte for byte from a
    source sits at its source offset modulo :data:`COPY_ALIGN`: the merged kernel copies of the
    parts after it then start aligned on both sides (:meth:`Stream._apply`), ~25% faster. 0 when
    nothing is copied, or when the padding would break the data section's 8-byte alignment."""
    from .encode import direct_parts

    for a in actions:
        for o, part in (direct_parts(a, view) or {}).items():
            pad = (part.offset - offsets[o.key] - data_start) % COPY_ALIGN
            return pad if (data_start + pad) % 8 == data_start % 8 else 0
    return 0


class Progress:
    """The writes of one conversion: a progress line on a terminal's stderr (nothing otherwise)
    and, with OVERLAP, the one output file whose writes are still in flight.

    With OVERLAP, :func:`write_actions` returns once every byte of its file is submitted, and hands
    its stream over: the writer goes on (configs, the index), the caller re-reads and checks each
    tensor as soon as :meth:`ready` says its bytes are final, while the rest is still being copied,
    and :meth:`settle` waits for the end. One file at a time is in flight (the next file's
    write_actions settles the previous one first), so memory stays bounded as without it.
    TOTAL (bytes, or a function giving them) is only worked out for the progress line."""

    def __init__(self, total: int | Callable[[], int], overlap: bool = False) -> None:
        self.done, self.t0 = 0, time.monotonic()
        self.tty = sys.stderr.isatty()
        self.total = (total() if callable(total) else total) if self.tty else 0
        self.shown = 0.0
        self.overlap = overlap
        self.stream: Stream | None = None   # the file in flight and its descriptor
        self.fd = -1

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

    def hold(self, stream: Stream, fd: int) -> None:
        """Take over STREAM, writing into FD, until :meth:`settle`."""
        self.stream, self.fd = stream, fd

    def ready(self, action: Any) -> None:
        """Wait until ACTION's output bytes are final (at once unless they are in flight)."""
        if self.stream is not None:
            self.stream.wait_mark(id(action))

    def settle(self, abort: bool = False) -> None:
        """Wait until every write in flight is done (ABORT: drop them) and re-raise its error."""
        stream, self.stream = self.stream, None
        if stream is None:
            return
        try:
            stream.close(abort)
        finally:
            os.close(self.fd)
            self.fd = -1


def write_actions(path: str, base: int, offsets: dict[str, int], actions, view, lossy: list,
                  progress: Progress, skip: frozenset[str] = frozenset(), early: "Early | None" = None) -> None:
    """Stream ACTIONS' bytes into the file at PATH (already holding its header): output part KEY
    starts at BASE + OFFSETS[KEY]. Parts named in SKIP are not written. EARLY: the file's first
    bytes are already being copied there (:class:`Early`, whose stream goes on). Returns once every
    byte is written, or, when PROGRESS overlaps, once every byte is submitted (see :class:`Progress`)."""
    from .encode import chunks

    overlap = isinstance(progress, Progress) and progress.overlap
    if overlap:
        progress.settle()
    end = base + sum(o.nbytes for a in actions for o in a.outs)
    if early is not None:
        fd, stream = early.hand_over()
        stream.end = end
    else:
        fd = os.open(path, os.O_WRONLY)
        stream = Stream(fd, end)
    try:
        for a in actions:
            for o, rel, data in chunks(a, view, lossy):
                if o.key in skip:
                    progress.add(len(data))
                    continue
                if o.what == "shape":
                    # the one part a reader reads besides headers (compressed-tensors' weight_shape
                    # gives an int tensor its logical shape): written at once, never held behind a
                    # copy, so the output can be re-read while its tensors are still being copied;
                    # where the early copy may still be writing, once it is done
                    at = base + offsets[o.key] + rel
                    if at < stream.filled[1] and at + len(data) > stream.filled[0]:
                        stream.wait_mark(Early.MARK)
                    _pwrite_all(fd, data, at)
                else:
                    stream.put(base + offsets[o.key] + rel, data)
                progress.add(len(data))
            stream.mark(id(a))
        if overlap:
            stream.flush()
            progress.hold(stream, fd)
            return
        stream.close()
    except BaseException:
        stream.close(abort=True)
        os.close(fd)
        raise
    os.close(fd)


class Early:
    """The first bytes of a safetensors output, copied while the conversion is still planned.

    Before the plan exists, neither the output header's length nor where each tensor goes is
    known. Early guesses both: the output's data section starts at DATA_START, a reservation for a
    header somewhat longer than the source's (the rest is padded with spaces, as safetensors allows),
    at the source's data offset modulo :data:`COPY_ALIGN` (the copies then run aligned), and its
    first LENGTH bytes mirror the source's first parts (as when a ModelOpt <-> compressed-tensors
    conversion renames its tensors). A writer thread copies those bytes at once. Once the plan and
    header are made, :meth:`keep` says which output parts the copy already wrote (a part whose
    source bytes are its own, at the mirrored place); the stream writes the rest over it. When the
    header does not fit the reservation or nothing matches, :meth:`discard` drops the file and the
    output is written as without it."""

    MARK = "early"   # the stream's mark for the early copy's end

    def __init__(self, path: str, src_path: str, src_base: int, length: int, data_start: int) -> None:
        self.path, self.src_path, self.src_base, self.length, self.data_start = \
            path, src_path, src_base, length, data_start
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        self.stream: Stream | None = None
        try:
            self.stream = Stream(self.fd)
            self.stream.filled = (data_start, data_start + length)
            self.stream.put(data_start, CopyFrom(src_path, src_base, length))
            self.stream.mark(self.MARK)
            self.stream.flush()
        except BaseException:
            self.abort()
            raise

    def keep(self, header_end: int, offsets: dict[str, int], actions, view) -> frozenset[str]:
        """The output parts the early copy wrote in full, when the header (ending at HEADER_END, a
        multiple of 8) fits the reservation; empty: :meth:`discard` it."""
        from .encode import direct_parts

        if header_end > self.data_start:
            return frozenset()
        keys = set()
        for a in actions:
            for o, part in (direct_parts(a, view) or {}).items():
                rel = offsets[o.key]
                if rel + o.nbytes > self.length:
                    continue
                if os.path.join(view.ckpt.root, part.file) == self.src_path and part.offset - self.src_base == rel:
                    keys.add(o.key)
            if not a.outs or offsets[a.outs[0].key] >= self.length:
                break
        return frozenset(keys)

    def write_header(self, path: str, blob: bytes, total: int) -> None:
        """Write the file's header (BLOB, padded to the reserved data start) and size it to TOTAL,
        moved to PATH (the file name the plan gives it)."""
        blob += b" " * (self.data_start - 8 - len(blob))
        _pwrite_all(self.fd, len(blob).to_bytes(8, "little") + blob, 0)
        os.ftruncate(self.fd, total)
        if path != self.path:
            os.rename(self.path, path)
            self.path = path

    def hand_over(self) -> tuple[int, Stream]:
        """The file's descriptor and stream, for the writer to go on with (they are then its own)."""
        fd, stream = self.fd, self.stream
        self.fd, self.stream = -1, None
        assert stream is not None
        return fd, stream

    def discard(self) -> None:
        """Wait for the early copy and remove the file: the output is written as without it."""
        self.abort(wait=True)
        os.remove(self.path)

    def abort(self, wait: bool = False) -> None:
        """Stop the copy (WAIT: let it finish) and close the file (nothing if handed over)."""
        stream, self.stream = self.stream, None
        try:
            if stream is not None:
                stream.close(abort=not wait)
        finally:
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1


def _pwrite_all(fd: int, data: bytes, pos: int) -> None:
    view, done = memoryview(data).cast("B"), 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], pos + done)
