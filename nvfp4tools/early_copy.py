"""Start the bulk copy of a lossless safetensors conversion before the conversion is planned.

A ModelOpt NVFP4 <-> compressed-tensors NVFP4 conversion leaves every code byte, block-scale
byte and unquantized tensor as it is, in the source's order: each output shard is the source
shard's data section with a few 4-byte globals rewritten, behind a new header. The copy of that
data section is nearly all of the work (the kernel copies page cache to page cache), and
everything else (imports, header parsing, planning, verification) used to run before or after it.
So the command starts copying each source shard's data section into the output file at once, at
an offset that leaves room for the new header, on a background thread, and plans meanwhile.

The header room is a guess made before the plan exists: the source header's length plus
``HEADROOM_PER_ENTRY`` bytes per tensor (compressed-tensors names are ~5 bytes longer than
ModelOpt's) plus ``HEADROOM_BYTES``. The safetensors format allows a header to be padded with
trailing spaces, so the real header is padded to the reserved length. When the plan does not fit
(a longer header, another data length, other shard names), that shard is written the ordinary way
and the copied bytes are overwritten: a wrong guess costs time, never correctness. Copies that the
plan needs and the early copy already made are recognised byte range by byte range
(:meth:`EarlyCopy.in_place`); everything else, the rewritten globals included, is a patch that
the copy thread writes between its requests once the copy has passed its bytes, and the
verification follows the copy (:meth:`EarlyCopy.final_below`). The output's data section starts
at the same offset within a page as the source's, so the kernel copies page onto page.

The command line starts the copy before click is imported (:func:`prestart`); this module imports
nothing heavy (no numpy, no dataclasses) for that reason. Measurements: bench/RESULTS.md, convert.
"""

from __future__ import annotations

import heapq
import os
import struct
import sys
import threading
import time

from .errors import UsageError
from .filecopy import copy_once

TYPE_CHECKING = False   # (typing and shutil cost 7 ms at import, before the copy starts)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

_BYTES = (bytes, bytearray, memoryview)   # patches written as they are (not range copies)

HEADROOM_PER_ENTRY = 16
HEADROOM_BYTES = 64 * 1024
ALIGN = 64 * 2**10         # the copy starts at this alignment on both sides (see header_room)
# One copy_file_range call: as large as the kernel takes (Linux's MAX_RW_COUNT, 2 GiB - 4 KiB,
# rounded down to ALIGN so that every request starts aligned on both sides), then one small last
# request. The number of requests is what matters: on the 2.9 GiB bench, once the kernel writes the
# dirty pages back (past ~2.3 GB copied), every further request ran at 0.5-0.75 GB/s instead of
# 2-3 GB/s, so a tail of many small requests took the copy from 1.16-1.47 s (median 1.22, two
# requests and a last one of 64 MiB) to 1.24-1.76 s (median 1.44, 1 GiB requests halving down to
# 8 MiB), six alternating rounds of the bare copy (bench/RESULTS.md, convert, Session 13). Why the
# kernel does that is not established. (Session 6 had measured plain 2 GiB requests no better than
# 1 GiB ones in the converter, 1.25-1.93 s against 1.17-1.59 s, six rounds each right after cp -r,
# the slot Session 13 found slow for whatever runs in it.)
_REQUEST = (0x7FFFF000 // ALIGN) * ALIGN
# What waits for the copy to pass its bytes (the patches of rewritten globals, the verification
# that follows the copy) waits at most for the request under way: the last one is small, so that
# nearly all of that work is done when the copy ends (with one 0.9 GiB last request, a third of it
# ran after the copy, about 0.1 s on the bench). Not smaller: the tensors of the request before it
# are verified while it runs, and behind a 64 MiB last request the fastest copies (1.28-1.31 s)
# were renamed 46-53 ms after the copy ended, behind 128 MiB 21 ms (bench/convert_tail.py; slower
# copies 2-8 ms and 10-13 ms).
_LAST_REQUEST = 128 * 2**20


def _request_size(remaining: int, request: int) -> int:
    """Bytes for the next copy request with REMAINING bytes to go: REQUEST, or what is left but
    the last _LAST_REQUEST bytes and the odd end (a multiple of ALIGN, so that the last request
    starts aligned too), then the rest in one."""
    head = (remaining - _LAST_REQUEST) // ALIGN * ALIGN
    return min(request, head) if head > 0 else remaining


class _Shard:
    """One source shard's early copy. (A plain class: importing dataclasses costs 15 ms, and
    this module is imported before the copy starts.)"""

    def __init__(self, out_name: str, src_path: str, src_base: int, data_len: int, reserved: int) -> None:
        self.out_name = out_name     # output file name (in the temporary folder)
        self.src_path = src_path     # real path of the source shard
        self.src_base = src_base     # where the source data section starts
        self.data_len = data_len
        self.reserved = reserved     # header bytes reserved in the output
        self.done = threading.Event()
        # the copy starts at the ALIGN boundary before the data section: LEAD bytes of the
        # source header's tail land in the output's header room, which the header then
        # overwrites (lead_done: set once they are copied, so that the header goes on top).
        # The kernel copies 2.9 GiB from offset 0 or any 64 KiB multiple in 1.01 s, from 4 KiB
        # or 123 bytes past one in 1.27-1.38 s (bench/RESULTS.md)
        self.lead = src_base % ALIGN if (8 + reserved) % ALIGN == src_base % ALIGN else 0
        self.lead_done = threading.Event()
        self.cancelled = False
        self.pos = 0                 # bytes of the lead and the data section copied
        self.copied = 0              # bytes of the data section copied
        self.seconds = 0.0           # wall time of the copy (for profiling)
        self.finished = False        # the copy thread is done with this shard (under lock)
        # patches: (absolute position, seq, data) waiting for the copy to pass them, applied by
        # the copy thread between its requests (a heap: the first one bounds what is final)
        self.patches: list[tuple[int, int, Any]] = []
        self.pending_bytes = 0
        self.lock = threading.Lock()
        self.apply: Callable[[int, Any], None] | None = None

    @property
    def data_start(self) -> int:
        return 8 + self.reserved


def _nvfp4_source(root: str) -> bool:
    """Cheap check that ROOT holds an NVFP4 checkpoint of ModelOpt or compressed-tensors (the
    plan decides for real; this only avoids starting copies that would be thrown away)."""
    for name in ("hf_quant_config.json", "config.json"):
        try:
            with open(os.path.join(root, name), "rb") as fh:
                if b"nvfp4" in fh.read().lower():
                    return True
        except OSError:
            pass
    return False


def _source_shards(root: str) -> list[str]:
    index = os.path.join(root, "model.safetensors.index.json")
    if os.path.isfile(index):
        import json  # (only here: the common single-file case starts copying without it)
        with open(index, "rb") as fh:
            return sorted(set(json.load(fh)["weight_map"].values()))
    return ["model.safetensors"] if os.path.isfile(os.path.join(root, "model.safetensors")) else []


def header_room(n: int, header: bytes) -> int:
    """Header bytes to reserve in the output for a source header of N bytes."""
    header = header.rstrip(b" ")   # not the padding of an earlier early copy
    reserved = len(header) + HEADROOM_PER_ENTRY * header.count(b'"data_offsets"') + HEADROOM_BYTES
    # the output's data section at the same offset modulo ALIGN as the source's, so that the
    # copy, which starts at the ALIGN boundary before it (_Shard.lead), is aligned on both sides
    # (not even in-page aligned: 1.4 s instead of cp's 1.1 s for 2.9 GiB; in-page but not
    # 64 KiB aligned: 1.27-1.38 s; 64 KiB: 1.01 s, bench/RESULTS.md)
    return reserved + ((n - reserved) % ALIGN if n % 8 == 0 else (-reserved) % 8)


def output_shard_name(i: int, n: int) -> str:
    return "model.safetensors" if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"


class EarlyCopy:
    """The background copy of every source shard's data section into TMP (see the module doc)."""

    def __init__(self, tmp: str, shards: list[_Shard]) -> None:
        self.tmp = tmp
        self.shards = {s.out_name: s for s in shards}
        self.error: BaseException | None = None
        self._stop = False
        self.progress = threading.Condition()   # notified after every copy request
        # the copy thread takes the GIL back after every request (and for every patch); with the
        # default 5 ms switch interval a busy main thread made it wait that long each time: the
        # copy of 2.9 GiB took 1.52 s beside a spinning main thread instead of 1.36 s (0.5 ms:
        # 1.33 s). Restored by close().
        self._switch = sys.getswitchinterval()
        sys.setswitchinterval(min(self._switch, 0.0005))
        self.thread = threading.Thread(target=self._run, name="nvfp4tools-early-copy", daemon=True)
        self.thread.start()

    @classmethod
    def begin(cls, src: str, tmp: str, to: str, *, experts: str | None, quantize: str | None,
              max_shard_bytes: int | None) -> EarlyCopy | None:
        """Create TMP and start copying, or return None (and create nothing) where the plan
        would not keep the source's data sections: other targets, expert re-layout,
        quantization, explicit re-sharding, sources that are not NVFP4 safetensors."""
        if (to not in ("modelopt", "compressed-tensors") or experts or quantize or max_shard_bytes is not None
                or not os.path.isdir(src) or not _nvfp4_source(src)):
            return None
        try:
            names = _source_shards(src)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None  # a broken index: the reader reports it properly
        if not names:
            return None
        shards = []
        try:
            for i, name in enumerate(names):
                path = os.path.join(src, name)
                with open(path, "rb") as fh:
                    head = fh.read(8)
                    if len(head) != 8:
                        return None
                    (n,) = struct.unpack("<Q", head)
                    size = os.fstat(fh.fileno()).st_size
                    if n > size - 8 or n > 512 * 2**20:
                        return None  # the reader reports this properly
                    reserved = header_room(n, fh.read(n))
                shards.append(_Shard(output_shard_name(i, len(names)), os.path.realpath(path), 8 + n,
                                     size - 8 - n, reserved))
        except OSError:
            return None
        try:
            os.makedirs(tmp)
        except OSError:
            return None  # an unwritable parent: the ordinary path reports it
        return cls(tmp, shards)

    def _run(self) -> None:
        # every shard's first ALIGN bytes (the lead and the data up to the next boundary) first,
        # so that no header waits for an earlier shard's whole copy
        for s in self.shards.values():
            try:
                if not (self._stop or s.cancelled):
                    self._copy(s, ALIGN)
            except BaseException as e:  # noqa: BLE001  (raised in the main thread)
                self.error = e
                self._stop = True
            s.lead_done.set()
        for s in self.shards.values():
            try:
                if not (self._stop or s.cancelled):
                    self._copy(s)
            except BaseException as e:  # noqa: BLE001  (raised in the main thread)
                self.error = e
                self._stop = True
            try:
                with s.lock:
                    # patches queued after the last request's turn: applied here, under the
                    # same lock that makes later ones see `finished` and apply themselves
                    s.finished = True
                    if self.error is None and s.copied == s.data_len:
                        self._drain(s, s.data_start + s.data_len)
            except BaseException as e:  # noqa: BLE001
                self.error = e
                self._stop = True
            s.done.set()
            with self.progress:
                self.progress.notify_all()

    def _copy(self, s: _Shard, upto: int | None = None) -> None:
        """Copy S's lead bytes and data section, from where it stands, up to UPTO bytes of that
        range (the first ALIGN block) or all of it."""
        t0 = time.perf_counter()
        fi = os.open(s.src_path, os.O_RDONLY)
        try:
            fo = os.open(os.path.join(self.tmp, s.out_name), os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                # no ftruncate to the final size first: the file grows as the copy writes it
                # (2.9 GiB in a median 1.05-1.11 s instead of 1.35-1.38 s; bench/RESULTS.md), and
                # the in-copy re-read of the header is told the final size instead
                # (formats._safetensors.EXPECTED_SIZES)
                total = s.lead + s.data_len if upto is None else min(upto, s.lead + s.data_len)
                while s.pos < total and not (self._stop or s.cancelled):
                    s.pos += copy_once(fi, fo, _request_size(total - s.pos, _REQUEST), s.src_base - s.lead + s.pos,
                                       s.data_start - s.lead + s.pos, s.src_path)
                    s.copied = max(0, s.pos - s.lead)
                    self._apply_copied(s)
                    with self.progress:
                        self.progress.notify_all()
            finally:
                os.close(fo)
        finally:
            os.close(fi)
            s.seconds += time.perf_counter() - t0

    # -- used by the writer ----------------------------------------------------------------------

    def claim(self, out_name: str, header_len: int, data_len: int) -> _Shard | None:
        """The early copy of OUT_NAME if a header of HEADER_LEN bytes and DATA_LEN bytes of data
        fit it; otherwise cancel that shard's copy (waiting until the thread lets go of the file)
        and return None."""
        s = self.shards.get(out_name)
        if s is None:
            return None
        if header_len <= s.reserved and data_len == s.data_len:
            s.lead_done.wait()   # the header goes over the copied lead bytes, not under them
            self._raise()
            return s
        s.cancelled = True
        s.done.wait()
        self._raise()
        return None

    def _apply_copied(self, s: _Shard) -> None:
        """Apply the patches whose bytes the copy has passed. On the copy thread, between its
        requests: a write from another thread into the file being copied waits for the inode
        lock the copy holds (4,690 globals written from the main thread made the copy of 2.9 GiB
        0.13 s slower)."""
        with s.lock:
            self._drain(s, s.data_start + s.copied)

    @staticmethod
    def _drain(s: _Shard, limit: int) -> None:
        """Apply the patches that end before LIMIT (S.lock held). Byte patches that touch are
        written together: a ModelOpt <-> compressed-tensors conversion rewrites each layer's
        weight global and the input scale stored right after it, 4,690 patches in 2,345 writes
        on the bench checkpoint, and the copy waits while they are written."""
        while s.patches and s.patches[0][0] + len(s.patches[0][2]) <= limit:
            pos, _, data = heapq.heappop(s.patches)
            if isinstance(data, _BYTES):
                s.pending_bytes -= len(data)
                end = pos + len(data)
                parts = [data]
                while (s.patches and s.patches[0][0] == end and isinstance(s.patches[0][2], _BYTES)
                       and end + len(s.patches[0][2]) <= limit):
                    nxt = heapq.heappop(s.patches)[2]
                    s.pending_bytes -= len(nxt)
                    parts.append(nxt)
                    end += len(nxt)
                if len(parts) > 1:
                    data = b"".join(parts)
            s.apply(pos, data)

    PATCH_PENDING_MAX = 64 * 2**20

    def patch(self, s: _Shard, pos: int, data: Any) -> None:
        """Write DATA (bytes, or a range copy that S.apply understands) at absolute position POS
        of S's file once the early copy has passed it; at once when the copy is over."""
        size = len(data) if isinstance(data, _BYTES) else 0
        while size and s.pending_bytes + size > self.PATCH_PENDING_MAX and not s.finished:
            with self.progress:  # memory stays bounded: wait for the copy to take some
                self.progress.wait(0.05)
            self._raise()
        with s.lock:
            if s.finished:
                self._check_complete(s)
                s.apply(pos, data)
                return
            heapq.heappush(s.patches, (pos, len(s.patches), data))
            s.pending_bytes += size

    def final_below(self, s: _Shard, end: int) -> bool:
        """The bytes of S's file before END are final: copied, and no patch waits before END."""
        with s.lock:
            if s.finished:
                self._check_complete(s)
            return s.data_start + s.copied >= end and not (s.patches and s.patches[0][0] < end)

    def discard(self, out_name: str) -> None:
        """Stop copying OUT_NAME and remove it: the plan writes no shard of that name."""
        s = self.shards[out_name]
        s.cancelled = True
        s.done.wait()
        self._raise()
        try:
            os.remove(os.path.join(self.tmp, out_name))
        except FileNotFoundError:
            pass

    @staticmethod
    def in_place(s: _Shard, path: str, offset: int, nbytes: int, rel: int) -> bool:
        """True when copying NBYTES at OFFSET of PATH to data-section position REL of the output
        is what the early copy does anyway."""
        return path == s.src_path and offset - s.src_base == rel and rel + nbytes <= s.data_len

    def _check_complete(self, s: _Shard) -> None:
        """S's copy is over: re-raise its error, or say where it stopped."""
        if s.copied != s.data_len:
            self._raise()
            raise OSError(f"early copy of {s.src_path} stopped at {s.copied} of {s.data_len} bytes")

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        """Stop copying and wait for the thread (the caller removes the folder on failure)."""
        self._stop = True
        self.thread.join()
        sys.setswitchinterval(self._switch)


def temp_dir_for(dst: str) -> str:
    """The sibling folder an output is written to before it is renamed into place (its name
    starts with a dot and names the process, so an interrupted convert leaves nothing that looks
    like a checkpoint)."""
    dst_real = os.path.realpath(dst)
    parent = os.path.dirname(dst_real) or "."
    return os.path.join(parent, f".{os.path.basename(dst_real)}.nvfp4tools-tmp-{os.getpid()}")


def check_destination(src_path: str, dst: str, force: bool, *, existing: bool = True) -> None:
    """Refuse DST when it is SRC_PATH or inside it, or (EXISTING) when it exists without FORCE."""
    src_real = os.path.realpath(src_path)
    dst_real = os.path.realpath(dst)
    if src_real == dst_real or dst_real.startswith(src_real.rstrip(os.sep) + os.sep):
        raise UsageError(f"destination {dst} is the source or inside it", hint="choose a new folder")
    if existing and os.path.exists(dst) and not force:
        raise UsageError(f"{dst} already exists", hint="pass --force to replace it")


def begin_early_copy(src_path: str, dst: str, to: str, *, experts: str | None = None, force: bool = False,
                     quantize: str | None = None, max_shard_bytes: int | None = None,
                     dry_run: bool = False) -> EarlyCopy | None:
    """Start copying the source's data sections into the temporary output folder before
    anything is planned, where the conversion will keep them (see :mod:`nvfp4tools.early_copy`).
    Nothing is started for a dry run or a destination that would be refused."""
    if dry_run:
        return None
    try:
        check_destination(src_path, dst, force)
    except UsageError:
        return None  # convert() reports it
    tmp = temp_dir_for(dst)
    if os.path.lexists(tmp):   # (a killed run's leftover; shutil costs 3 ms of import otherwise)
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    return EarlyCopy.begin(src_path, tmp, to, experts=experts, quantize=quantize, max_shard_bytes=max_shard_bytes)


# -- started from the command line before click parses it --------------------------------------------

_PRESTARTED: dict[tuple, EarlyCopy | None] = {}
_PLAIN_FLAGS = {"--force", "--allow-lossy"}
_VALUE_OPTIONS = {"--to", "--verify", "--format"}


def prestart(args: list[str]) -> None:
    """Start the early copy for ``convert ARGS`` before click is imported, where ARGS are plainly
    a lossless candidate: two positional arguments and only options that leave the data layout
    alone (anything else, --help included, starts nothing and click decides). The command takes
    it over with :func:`take_prestarted` when click's parse agrees; otherwise, or if the process
    ends first (a usage error), it is stopped and its folder removed."""
    pos: list[str] = []
    opts: dict[str, str] = {}
    it = iter(args)
    for a in it:
        if a in _PLAIN_FLAGS:
            opts[a] = ""
        elif a.split("=", 1)[0] in _VALUE_OPTIONS:
            if "=" in a:
                k, v = a.split("=", 1)
            else:
                k, v = a, next(it, None)
                if v is None:
                    return
            opts[k] = v
        elif a.startswith("-"):
            return
        else:
            pos.append(a)
    if len(pos) != 2 or opts.get("--to") not in ("modelopt", "compressed-tensors"):
        return
    key = (pos[0], pos[1], opts["--to"], "--force" in opts)
    early = begin_early_copy(pos[0], pos[1], opts["--to"], force="--force" in opts)
    if early is not None:
        import atexit
        _PRESTARTED[key] = early
        atexit.register(_drop_prestarted)


def take_prestarted(src: str, dst: str, to: str, *, force: bool, experts: str | None, quantize: str | None,
                    max_shard_bytes: int | None, dry_run: bool) -> EarlyCopy | None:
    """The copy :func:`prestart` began for exactly these arguments (None otherwise: any other
    is stopped and removed)."""
    early = _PRESTARTED.pop((src, dst, to, force), None)
    if early is not None and (experts or quantize or max_shard_bytes is not None or dry_run):
        _PRESTARTED[(src, dst, to, force)] = early   # not this conversion's: dropped below
        early = None
    _drop_prestarted()
    return early


def _drop_prestarted() -> None:
    import shutil
    for early in _PRESTARTED.values():
        if early is not None:
            early.close()
            shutil.rmtree(early.tmp, ignore_errors=True)
    _PRESTARTED.clear()
