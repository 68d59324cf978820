"""convert's early copy (nvfp4tools.early_copy): the data sections copied before planning give the
same tensors as the ordinary write, whichever way the guess about the header goes, and leave no
stray file behind."""

from __future__ import annotations

import heapq
import os
import struct

import pytest

from nvfp4tools import early_copy
from nvfp4tools.convert import convert
from tests.test_convert import _tensors


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """A ModelOpt NVFP4 checkpoint in two shards (an index, each shard its own data section)."""
    from nvfp4tools.synth import synthesize

    path = str(tmp_path_factory.mktemp("early") / "src")
    synthesize(path, preset="gemma4-tiny", fmt="modelopt", recipe="all-linear", shards=2)
    return path


def _header(path: str) -> tuple[int, int]:
    """(header length, length without the trailing spaces)."""
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        return n, len(fh.read(n).rstrip(b" "))


def _claims(monkeypatch) -> list:
    got: list = []
    orig = early_copy.EarlyCopy.claim

    def spy(self, *a):
        r = orig(self, *a)
        got.append(r is not None)
        return r
    monkeypatch.setattr(early_copy.EarlyCopy, "claim", spy)
    return got


def _shards(path: str) -> list[str]:
    return sorted(n for n in os.listdir(path) if n.endswith(".safetensors"))


def test_early_copy_is_claimed_and_equals_the_ordinary_write(sharded, tmp_path, monkeypatch):
    claims = _claims(monkeypatch)
    early, plain = str(tmp_path / "early"), str(tmp_path / "plain")
    convert(sharded, early, "compressed-tensors")
    assert claims == [True, True]
    # an explicit --max-shard-size starts no early copy: the ordinary write, as before
    convert(sharded, plain, "compressed-tensors", max_shard_bytes=10**12)
    assert claims == [True, True]
    assert _tensors(early) == _tensors(plain)
    assert _shards(early) == _shards(sharded)  # sharding kept by default
    assert os.path.isfile(os.path.join(early, "model.safetensors.index.json"))
    for name in _shards(early):
        n, used = _header(os.path.join(early, name))
        assert n > used  # padded to the reserved length with spaces (the format allows it)
        with open(os.path.join(early, name), "rb") as fh:
            head = fh.read(8 + n)
        # the copy began at the 64 KiB boundary before the data, over the end of the header
        # room: the header written afterwards covers those bytes, only spaces follow the JSON
        assert head[8 + used:] == b" " * (n - used)
        src_n = int.from_bytes(open(os.path.join(sharded, name), "rb").read(8), "little")
        assert (8 + n) % early_copy.ALIGN == (8 + src_n) % early_copy.ALIGN


def test_back_and_forth_does_not_grow_the_header(sharded, tmp_path):
    """The reservation counts the source header without its padding, so padding never compounds."""
    a, b, c = (str(tmp_path / x) for x in "abc")
    convert(sharded, a, "compressed-tensors")
    convert(a, b, "modelopt")
    convert(b, c, "compressed-tensors")
    assert _tensors(a) == _tensors(c)
    for name in _shards(a):
        (na, ua), (nc, uc) = _header(os.path.join(a, name)), _header(os.path.join(c, name))
        assert ua == uc and abs(nc - na) < 1024  # (the metadata of B differs from the source's a little)


def test_header_larger_than_reserved_falls_back(sharded, tmp_path, monkeypatch):
    claims = _claims(monkeypatch)
    monkeypatch.setattr(early_copy, "header_room", lambda n, header: 8)  # no header fits in 8 bytes
    out, ref = str(tmp_path / "o"), str(tmp_path / "ref")
    convert(sharded, out, "compressed-tensors")
    assert claims == [False, False]
    convert(sharded, ref, "compressed-tensors", max_shard_bytes=10**12)
    assert _tensors(out) == _tensors(ref)
    for name in _shards(out):
        n, used = _header(os.path.join(out, name))
        assert n - used < 8  # the ordinary header: padded to 8 bytes only


def test_copies_for_shards_the_plan_does_not_write_are_removed(sharded, tmp_path, monkeypatch):
    monkeypatch.setattr(early_copy, "output_shard_name", lambda i, n: f"guess-{i}.safetensors")
    out = str(tmp_path / "o")
    convert(sharded, out, "compressed-tensors")
    assert not [n for n in os.listdir(out) if n.startswith("guess-")]
    assert _shards(out) == _shards(sharded)


def test_not_started_where_the_plan_cannot_keep_the_data(sharded, tmp_path):
    tmp = str(tmp_path / ".t")
    for kw in ({"experts": "fused"}, {"quantize": "nvfp4"}, {"max_shard_bytes": 10**9}):
        assert early_copy.EarlyCopy.begin(sharded, tmp, "compressed-tensors", **{
            "experts": None, "quantize": None, "max_shard_bytes": None, **kw}) is None
    assert early_copy.EarlyCopy.begin(sharded, tmp, "gguf", experts=None, quantize=None, max_shard_bytes=None) is None
    assert not os.path.exists(tmp)
    # a refused destination starts nothing either (convert() reports it)
    assert early_copy.begin_early_copy(sharded, sharded, "compressed-tensors") is None


def test_without_a_kernel_copy_falls_back_to_read_and_write(sharded, tmp_path, monkeypatch):
    import errno

    def exdev(*a, **k):
        raise OSError(errno.EXDEV, "Invalid cross-device link")
    claims = _claims(monkeypatch)
    out, ref = str(tmp_path / "o"), str(tmp_path / "ref")
    convert(sharded, ref, "compressed-tensors")
    monkeypatch.setattr(os, "copy_file_range", exdev)
    convert(sharded, out, "compressed-tensors")
    assert claims == [True, True, True, True]
    assert _tensors(out) == _tensors(ref)
    plain = str(tmp_path / "plain")   # the ordinary writer's copies take the same fallback
    convert(sharded, plain, "compressed-tensors", max_shard_bytes=10**12)
    assert _tensors(plain) == _tensors(ref)


def test_command_line_prestart_used_and_cleaned_up(sharded, tmp_path):
    """The entry point starts the copy before click parses; the command takes it over (same
    tensors as the library), and a usage error click finds afterwards leaves no folder behind."""
    import subprocess
    import sys

    out, ref = str(tmp_path / "o"), str(tmp_path / "ref")
    r = subprocess.run([sys.executable, "-m", "nvfp4tools", "convert", sharded, out, "--to", "compressed-tensors",
                        "--format", "json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-800:]
    convert(sharded, ref, "compressed-tensors", max_shard_bytes=10**12)
    assert _tensors(out) == _tensors(ref)
    bad = str(tmp_path / "bad")
    r = subprocess.run([sys.executable, "-m", "nvfp4tools", "convert", sharded, bad, "--to", "compressed-tensors",
                        "--verify", "nonsense"], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert sorted(os.listdir(tmp_path)) == ["o", "ref"]


def test_padded_header_loads_in_the_safetensors_library(sharded, tmp_path):
    """What engines load with (Hugging Face safetensors) reads the space-padded header."""
    safetensors = pytest.importorskip("safetensors")
    torch = pytest.importorskip("torch")  # (numpy has no float8_e4m3fn for the block scales)
    out = str(tmp_path / "o")
    convert(sharded, out, "compressed-tensors")
    ours = _tensors(out)
    n = 0
    for name in _shards(out):
        with safetensors.safe_open(os.path.join(out, name), "pt") as f:
            for k in f.keys():
                a = f.get_tensor(k)
                assert list(a.shape) == list(ours[k][1])
                assert a.reshape(-1).view(torch.uint8).numpy().tobytes() == ours[k][2]
                n += 1
    assert n == len(ours)


def test_dry_run_may_name_an_existing_destination(sharded, tmp_path):
    out = tmp_path / "exists"
    out.mkdir()
    r = convert(sharded, str(out), "compressed-tensors", dry_run=True)
    assert r["lossless"] and os.listdir(out) == [] and sorted(os.listdir(tmp_path)) == ["exists"]


def test_broken_inputs_start_nothing_and_are_reported_by_the_reader(sharded, tmp_path):
    """The early copy runs before any validation: a broken index or an unwritable destination
    must leave the error to the ordinary path (one line, its exit code), not raise itself."""
    import shutil

    src = str(tmp_path / "src")
    shutil.copytree(sharded, src)
    with open(os.path.join(src, "model.safetensors.index.json"), "w") as fh:
        fh.write("{not json")
    assert early_copy.EarlyCopy.begin(src, str(tmp_path / ".t"), "compressed-tensors", experts=None,
                                      quantize=None, max_shard_bytes=None) is None
    assert early_copy.EarlyCopy.begin(sharded, "/proc/nvfp4tools-cannot/.t", "compressed-tensors", experts=None,
                                      quantize=None, max_shard_bytes=None) is None
    from nvfp4tools.errors import Nvfp4ToolsError
    with pytest.raises(Nvfp4ToolsError):
        convert(src, str(tmp_path / "o"), "compressed-tensors")
    assert sorted(os.listdir(tmp_path)) == ["src"]


def test_lossless_nvfp4_convert_never_imports_numpy(sharded, tmp_path):
    """numpy's import is a third of the CPU time of a ModelOpt -> compressed-tensors conversion
    (nvfp4tools/_lazy.py): the lossless path converts its scalars in plain Python."""
    import subprocess
    import sys

    # (main() ends the process itself, with os._exit after the atexit handlers: the check is one)
    code = ("import atexit, sys\nfrom nvfp4tools.cli import main\n"
            "atexit.register(lambda: print('numpy' in sys.modules))\nmain()\n")
    for to, src in (("compressed-tensors", sharded), ("modelopt", str(tmp_path / "ct"))):
        dst = str(tmp_path / ("ct" if to == "compressed-tensors" else "mo"))
        r = subprocess.run([sys.executable, "-c", code, "convert", src, dst, "--to", to, "--format", "json"],
                           capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=os.getcwd()), check=False)
        assert r.returncode == 0, r.stderr[-2000:]
        assert r.stdout.rstrip().endswith("False"), f"{to}: numpy was imported"


def _convert_in_requests(monkeypatch, sharded: str, tmp_path, align: int, request: int, last: int) -> list[int]:
    """Convert SHARDED with the early copy scaled down (ALIGN, REQUEST, LAST bytes), check that
    both shards were claimed and that the output is byte for byte what the ordinary write makes;
    return the sizes of the copy requests made."""
    monkeypatch.setattr(early_copy, "ALIGN", align)
    monkeypatch.setattr(early_copy, "_REQUEST", request)
    monkeypatch.setattr(early_copy, "_LAST_REQUEST", last)
    calls: list[int] = []
    orig = early_copy.copy_once
    monkeypatch.setattr(early_copy, "copy_once", lambda fi, fo, n, *a: calls.append(n) or orig(fi, fo, n, *a))
    claims = _claims(monkeypatch)
    early, plain = str(tmp_path / "early"), str(tmp_path / "plain")
    convert(sharded, early, "compressed-tensors")
    assert claims == [True, True]
    convert(sharded, plain, "compressed-tensors", max_shard_bytes=10**12)
    assert _tensors(early) == _tensors(plain)
    return calls


def test_early_copy_in_many_requests_equals_the_ordinary_write(sharded, tmp_path, monkeypatch):
    """The copy in small requests (8 KiB here, aligned to 4 KiB, the last at least 4 KiB; 2 GiB,
    64 KiB and 128 MiB in production): patches land between requests as the copy passes them,
    verification follows it, and the output is byte for byte what the ordinary write makes."""
    calls = _convert_in_requests(monkeypatch, sharded, tmp_path, 4096, 8192, 4096)
    assert calls.count(8192) > 10, calls


def test_request_schedule_is_full_requests_then_one_small_last():
    """As large a request as the kernel takes (2 GiB - 64 KiB, a multiple of 64 KiB), then the rest
    but the last 128 MiB, then those: every request but the last a multiple of 64 KiB (each starts
    aligned on both sides), and the last one small, so that what waits for the copy to pass it
    (patches, verification) waits for 128 MiB at the end, not for a 0.9 GiB request; few requests,
    because the kernel ran every request after writeback began at a third of the speed."""
    req, align, last = early_copy._REQUEST, early_copy.ALIGN, early_copy._LAST_REQUEST
    assert req % align == 0 and 0x7FFFF000 - align < req <= 0x7FFFF000
    for total in (3_129_382_596 - 1_500_000, 2**31 + 5, 10 * 2**30 + 12_345, 2 * 2**30, 2**30 + 1, 100 * 2**20,
                  last + align + 7, last + 1, 12_345):
        sizes = _sizes(total, req)
        assert sum(sizes) == total and all(0 < n <= req for n in sizes)
        assert all(n % align == 0 for n in sizes[:-1]), sizes
        assert last <= sizes[-1] < last + align or len(sizes) == 1 and total < last + align, sizes
        assert all(n == req for n in sizes[:-2]), sizes
    mib = [round(n / 2**20) for n in _sizes(3_129_382_596 - 1_500_000, req)]   # the bench checkpoint
    assert mib == [2048, 807, 128], mib


def _sizes(total: int, req: int) -> list[int]:
    out = []
    while total:
        out.append(early_copy._request_size(total, req))
        total -= out[-1]
    return out


def test_early_copy_with_a_small_last_request_equals_the_ordinary_write(sharded, tmp_path, monkeypatch):
    """Full requests and a small last one (scaled down: 256 KiB requests, 64 KiB last) give the
    same output byte for byte."""
    align = early_copy.ALIGN
    calls = _convert_in_requests(monkeypatch, sharded, tmp_path, align, 4 * align, align)
    assert any(align <= n < 2 * align for n in calls), calls   # a last request
    assert any(n == 4 * align for n in calls), calls           # and full ones


def test_touching_byte_patches_are_written_together_in_order():
    """Adjacent byte patches go out in one write; a later patch of the same bytes still wins,
    range copies are never merged, and nothing past the limit is written."""
    s = early_copy._Shard("x", "/src", 0, 1000, 0)
    writes: list = []
    s.apply = lambda pos, data: writes.append((pos, bytes(data) if not isinstance(data, tuple) else data))
    seq = iter(range(100))
    for pos, data in ((100, b"AAAA"), (104, b"BBBB"), (104, b"bbbb"), (108, ("copy", 4)), (200, b"CC"),
                      (202, b"DD"), (300, b"EE")):
        heapq.heappush(s.patches, (pos, next(seq), data))
        s.pending_bytes += len(data) if isinstance(data, bytes) else 0
    early_copy.EarlyCopy._drain(s, 204)
    assert writes == [(100, b"AAAABBBB"), (104, b"bbbb"), (108, ("copy", 4)), (200, b"CCDD")]
    assert [p[0] for p in s.patches] == [300] and s.pending_bytes == 2
