"""The first bytes of a safetensors output copied while the conversion is still planned
(formats/_st_target.py SafetensorsTarget.begin, nvfp4tools/convert/stream.py Early), and the
shorter copies near a file's end (Stream.TAIL_RUN): the output is the same as without them."""

from __future__ import annotations

import os

import pytest

from nvfp4tools import formats
from tests.helpers import tensor_bytes


@pytest.fixture
def early(monkeypatch):
    """Early copies on for the tiny test checkpoints; returns what each one kept."""
    import nvfp4tools.convert.stream as st
    import nvfp4tools.formats._st_target as tg

    monkeypatch.setattr(tg, "EARLY_MIN", 1)
    monkeypatch.setattr(tg, "EARLY_BYTES", 64 * 1024)
    kept: list[frozenset[str]] = []
    orig = st.Early.keep

    def keep(self, *a, **k):
        got = orig(self, *a, **k)
        kept.append(got)
        return got

    monkeypatch.setattr(st.Early, "keep", keep)
    return kept


def _plain(src, dst, to, **kw):
    import nvfp4tools.formats._st_target as tg
    from nvfp4tools.convert import convert

    old = tg.EARLY_MIN
    tg.EARLY_MIN = 1 << 62   # off
    try:
        return convert(src, dst, to, **kw)
    finally:
        tg.EARLY_MIN = old


@pytest.mark.parametrize("to,verify", [("compressed-tensors", "sampled"), ("compressed-tensors", "full"),
                                       ("modelopt", "sampled")])
def test_an_early_copy_gives_the_same_output(synth_dir, tmp_path, early, to, verify):
    """ModelOpt -> compressed-tensors (and its way back): the first tensors copied before the plan is
    made, at the mirrored place behind a reserved header, and kept; every tensor equals the output
    written without it; the output is at the source's offsets modulo 64 KiB."""
    from nvfp4tools.convert import convert
    from nvfp4tools.convert.stream import COPY_ALIGN
    from nvfp4tools.formats._safetensors import parse_header

    src = synth_dir(fmt="modelopt", recipe="all-linear")
    if to == "modelopt":
        src = str(_plain(src, str(tmp_path / "ct0"), "compressed-tensors")["destination"])
    rep = convert(src, str(tmp_path / "early"), to, verify=verify)
    assert early and early[0], "the early copy was not kept"
    assert rep["verified_tensors"] > 50
    _plain(src, str(tmp_path / "plain"), to)
    assert tensor_bytes(str(tmp_path / "early")) == tensor_bytes(str(tmp_path / "plain"))
    s, o = parse_header(src, "model.safetensors"), parse_header(str(tmp_path / "early"), "model.safetensors")
    first = min(s.tensors.values(), key=lambda t: t.offset)
    assert (o.tensors[next(iter(early[0]))].offset - first.offset) % COPY_ALIGN == 0
    assert sorted(os.listdir(tmp_path)) == sorted(["early", "plain"] + (["ct0"] if to == "modelopt" else []))


def test_a_header_longer_than_reserved_discards_the_early_copy(synth_dir, tmp_path, early, monkeypatch):
    """An output header that does not fit the reservation: the early file is dropped and the output
    written as without it (the same bytes, the usual header padding)."""
    import nvfp4tools.formats._st_target as tg
    from nvfp4tools.convert import convert

    monkeypatch.setattr(tg, "early_data_start", lambda base: base)   # the source's own header length
    src = synth_dir(fmt="modelopt", recipe="all-linear")
    convert(src, str(tmp_path / "early"), "compressed-tensors")
    assert early == [frozenset()]
    _plain(src, str(tmp_path / "plain"), "compressed-tensors")
    assert open(tmp_path / "early" / "model.safetensors", "rb").read() == \
        open(tmp_path / "plain" / "model.safetensors", "rb").read()


def test_an_early_copy_into_another_layout(synth_dir, tmp_path, early):
    """Fused experts: the output's first parts may not sit where the source's do; what matches is
    kept, the rest is written over it, and the output equals the one written without it."""
    from nvfp4tools.convert import convert

    src = synth_dir(fmt="modelopt", recipe="all-linear")
    convert(src, str(tmp_path / "early"), "modelopt", experts="fused")
    assert early
    _plain(src, str(tmp_path / "plain"), "modelopt", experts="fused")
    assert tensor_bytes(str(tmp_path / "early")) == tensor_bytes(str(tmp_path / "plain"))


def test_a_refused_plan_after_an_early_copy_leaves_nothing(synth_dir, tmp_path, early, monkeypatch):
    """The plan refuses once the early copy has started: the copy is stopped and nothing is left at
    DST or beside it."""
    import nvfp4tools.formats._st_target as tg
    from nvfp4tools.convert import convert
    from nvfp4tools.errors import UnsupportedError

    started = []
    orig = tg.SafetensorsTarget.begin

    def begin(self, *a, **k):
        e = orig(self, *a, **k)
        started.append(e)
        return e

    def refuse(self, *a, **k):
        raise UnsupportedError("refused")

    monkeypatch.setattr(tg.SafetensorsTarget, "begin", begin)
    monkeypatch.setattr(tg.SafetensorsTarget, "plan", refuse)
    src = synth_dir(fmt="modelopt", recipe="all-linear")
    with pytest.raises(UnsupportedError):
        convert(src, str(tmp_path / "ct"), "compressed-tensors")
    assert started and started[0] is not None
    assert os.listdir(tmp_path) == []


def test_dry_run_starts_nothing(synth_dir, tmp_path, early):
    from nvfp4tools.convert import convert

    src = synth_dir(fmt="modelopt", recipe="all-linear")
    rep = convert(src, str(tmp_path / "ct"), "compressed-tensors", dry_run=True)
    assert rep["n_output_tensors"] > 50 and early == [] and os.listdir(tmp_path) == []


def test_copies_near_the_end_halve_and_keep_the_bytes(tmp_path):
    """With the file's end known, a merged copy goes out once it is as long as what follows it
    (down to TAIL_RUN): the runs halve towards the end, and the bytes are those of one copy."""
    from nvfp4tools.convert.encode import CopyFrom
    from nvfp4tools.convert.stream import Stream

    data = os.urandom(1 << 16)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    dst = tmp_path / "dst.bin"
    dst.write_bytes(b"\0" * len(data))
    sizes = []

    class Rec(Stream):
        TAIL_RUN = 1024

        def _submit(self, pos, d):
            if isinstance(d, CopyFrom):
                sizes.append(d.nbytes)
            super()._submit(pos, d)

    fd = os.open(dst, os.O_WRONLY)
    s = Rec(fd, end=len(data))
    for pos in range(0, len(data), 256):
        s.put(pos, CopyFrom(str(src), pos, 256))
    s.close()
    os.close(fd)
    assert dst.read_bytes() == data
    assert sizes[0] >= len(data) // 2 - 256 and sizes[-1] <= 1024 + 256 and sum(sizes) == len(data)
    assert all(b <= a for a, b in zip(sizes, sizes[1:]))


def test_an_early_copy_under_int4_shapes(synth_dir, tmp_path, early):
    """compressed-tensors W4A16 to itself: the weight_shape parts (written at once, outside the
    stream) wait for the early copy where it may still be writing; the output equals the source."""
    from nvfp4tools.convert import convert

    src = synth_dir(fmt="compressed-tensors-w4a16", recipe="all-linear")
    convert(src, str(tmp_path / "early"), "compressed-tensors")
    assert early and early[0]
    assert tensor_bytes(str(tmp_path / "early")) == tensor_bytes(src)
