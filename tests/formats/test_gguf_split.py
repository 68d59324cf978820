"""Split GGUFs (``NAME-00001-of-0000N.gguf``): every reader consumer reads all the parts from the first
part's path or from the folder, and sees what it sees in the unsplit file. Splits are written the way
llama.cpp's gguf-split writes them (no gguf-split binary here: :func:`gguf_split` follows
``tools/gguf-split/gguf-split.cpp``), by gguf-py's own writer, and by llama.cpp's converter."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest

GGUF_DEFAULT_ALIGNMENT = 32
UINT16, INT32 = 2, 5   # GGUF value types of split.no / split.count and split.tensors.count


def _str(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def _kv(key: str, vtype: int, fmt: str, value) -> bytes:
    return _str(key) + struct.pack("<I", vtype) + struct.pack("<" + fmt, value)


def gguf_split(src: str, prefix: str, max_tensors: int, *, no_tensor_first_split: bool = False,
               split_keys=None) -> list[str]:
    """Split SRC into PREFIX-0000i-of-0000N.gguf as llama.cpp's gguf-split does (``split_strategy``
    and ``write``): every key/value of SRC in the first part only (``gguf_set_kv`` for i_split 0),
    then in every part ``split.no`` (u16, from 0), ``split.count`` (u16) and ``split.tensors.count``
    (i32, all parts); MAX_TENSORS tensors a part (``--split-max-tensors``), an empty first part with
    NO_TENSOR_FIRST_SPLIT; each tensor's data padded to GGUF_DEFAULT_ALIGNMENT. SPLIT_KEYS(i, n, total)
    -> (no, count, tensors_count) lets a test write wrong values."""
    from gguf import GGUFReader

    r = GGUFReader(src)
    # a field's parts are its serialized pieces (key length, key, type, value): copied byte for byte
    kv = [b"".join(bytes(p) for p in f.parts) for name, f in r.fields.items() if not name.startswith("GGUF.")]
    tensors = list(r.tensors)
    groups = [tensors[i:i + max_tensors] for i in range(0, len(tensors), max_tensors)]
    if no_tensor_first_split:
        groups.insert(0, [])
    n, total = len(groups), len(tensors)
    paths = []
    for i, group in enumerate(groups):
        no, count, tc = split_keys(i, n, total) if split_keys else (i, n, total)
        kvs = (kv if i == 0 else []) + [_kv("split.no", UINT16, "H", no), _kv("split.count", UINT16, "H", count),
                                        _kv("split.tensors.count", INT32, "i", tc)]
        infos, blobs, off = [], [], 0
        for t in group:
            raw = np.asarray(t.data).tobytes()
            ne = [int(x) for x in t.shape]   # gguf-py keeps ggml order (ne0 first)
            infos.append(_str(t.name) + struct.pack(f"<I{len(ne)}QIQ", len(ne), *ne, int(t.tensor_type), off))
            pad = -len(raw) % GGUF_DEFAULT_ALIGNMENT
            blobs.append(raw + b"\0" * pad)
            off += len(raw) + pad
        head = b"GGUF" + struct.pack("<IQQ", 3, len(group), len(kvs)) + b"".join(kvs) + b"".join(infos)
        head += b"\0" * (-len(head) % GGUF_DEFAULT_ALIGNMENT)
        path = f"{prefix}-{i + 1:05d}-of-{n:05d}.gguf"
        with open(path, "wb") as fh:
            fh.write(head + b"".join(blobs))
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """A tiny Gemma 4 GGUF (stacked experts, Q4_0) to split."""
    from nvfp4tools.synth_gguf import write_gemma4_gguf

    return write_gemma4_gguf(str(tmp_path_factory.mktemp("single") / "tiny.gguf"), qtype="q4_0")["path"]


def _json(run_cli, *args):
    r = run_cli(*args, "--format", "json")
    assert r.exit_code == 0, r.stdout[-2000:] + r.stderr
    return json.loads(r.stdout)


def _same_model(a: dict, b: dict) -> None:
    """Two inspect reports of the same tensors: all but where the bytes live."""
    for k in ("summary", "roles", "coverage", "layers", "architecture", "algorithm", "findings"):
        assert a[k] == b[k], k


@pytest.mark.parametrize("no_tensor_first_split", [False, True])
def test_gguf_split_layout_reads_like_the_single_file(single, tmp_path, run_cli, no_tensor_first_split):
    from gguf import GGUFReader

    parts = gguf_split(single, str(tmp_path / "tiny"), 16, no_tensor_first_split=no_tensor_first_split)
    assert len(parts) >= 4
    for p in parts:   # each part is a GGUF gguf-py reads
        GGUFReader(p)
    ref = _json(run_cli, "inspect", single)
    for given in (parts[0], str(tmp_path), parts[2]):
        got = _json(run_cli, "inspect", given)
        _same_model(got, ref)
        assert got["files"] == [os.path.basename(p) for p in parts]
        assert got["metadata"]["split.count"] == len(parts)
    # the header's key/values are the first part's: all of the model's, plus the split keys
    meta = {e["key"]: e for e in _json(run_cli, "inspect", parts[0], "--metadata")["file_metadata"][0]["entries"]}
    assert meta["split.no"]["value"] == 0 and meta["split.count"]["value"] == len(parts)
    assert meta["split.tensors.count"] == {"key": "split.tensors.count", "type": "INT32",
                                          "value": ref["summary"]["n_tensors"], "length": None, "truncated": False}
    assert meta["general.architecture"]["value"] == "gemma4"


def test_every_reader_consumer_reads_the_parts(single, tmp_path, run_cli):
    """verify decodes tensors of the later parts exactly as in the single file; estimate sizes the same
    weights."""
    parts = gguf_split(single, str(tmp_path / "tiny"), 10)
    v1, v2 = _json(run_cli, "verify", single), _json(run_cli, "verify", parts[0])
    strip = [{k: x[k] for k in ("name", "expert", "path_rel_err", "verdict", "backends")} for x in v1["layers"]]
    assert [{k: x[k] for k in ("name", "expert", "path_rel_err", "verdict", "backends")} for x in v2["layers"]] == strip
    e1 = _json(run_cli, "estimate", single, "--vram", "24GiB")
    e2 = _json(run_cli, "estimate", str(tmp_path), "--vram", "24GiB")
    assert e1["weights"] == e2["weights"] and e1["memory"] == e2["memory"]

    from nvfp4tools import formats
    from nvfp4tools.tensors import dequantize

    a, b = formats.read(single), formats.read(parts[0])
    last = list(b.tensors)[-1]
    assert b.tensors[last].part("data").file != b.tensors[list(b.tensors)[0]].part("data").file
    assert np.array_equal(dequantize(a, a.tensors[last]), dequantize(b, b.tensors[last]))


def test_gguf_py_writer_split(tmp_path, run_cli):
    """gguf-py's GGUFWriter(split_max_tensors=...) writes the same layout."""
    import gguf

    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "llama", split_max_tensors=2)
    w.add_block_count(3)
    for i in range(3):
        for proj in ("attn_q", "attn_k"):
            q = gguf.quants.quantize(rng.standard_normal((64, 128)).astype(np.float32), gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(f"blk.{i}.{proj}.weight", q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    names = sorted(os.listdir(tmp_path))
    assert names == [f"m-{i:05d}-of-00003.gguf" for i in (1, 2, 3)]
    rep = _json(run_cli, "inspect", str(tmp_path / names[0]))
    assert rep["summary"]["n_tensors"] == 6 and rep["files"] == names
    assert not [f for f in rep["findings"] if f["severity"] != "info"], rep["findings"]
    assert _json(run_cli, "verify", str(tmp_path))["summary"]["n_layers"] == 6


# -- parts that do not belong together ------------------------------------------------------------------

def _refused(run_cli, path, *needles):
    r = run_cli("inspect", path)
    assert r.exit_code == 3, (r.exit_code, r.stdout[-500:], r.stderr)
    err = r.stderr.strip()
    assert "\n" not in err and "Traceback" not in err
    for n in needles:
        assert n in err, (n, err)


def test_wrong_split_no(single, tmp_path, run_cli):
    parts = gguf_split(single, str(tmp_path / "t"), 16, split_keys=lambda i, n, total: (min(i, 1), n, total))
    _refused(run_cli, parts[0], parts[2].rsplit("/", 1)[1], "split.no is 1, expected 2")


def test_wrong_tensor_count(single, tmp_path, run_cli):
    parts = gguf_split(single, str(tmp_path / "t"), 16, split_keys=lambda i, n, total: (i, n, total + 1))
    _refused(run_cli, parts[0], "split.tensors.count is", "parts hold")


def test_wrong_split_count(single, tmp_path, run_cli):
    parts = gguf_split(single, str(tmp_path / "t"), 16, split_keys=lambda i, n, total: (i, n + 1, total))
    _refused(run_cli, parts[0], f"split.count is {len(parts) + 1}, the name says {len(parts)} parts")


def test_first_part_renamed(single, tmp_path, run_cli):
    parts = gguf_split(single, str(tmp_path / "t"), 16)
    lone = str(tmp_path / "renamed.gguf")
    shutil.copy(parts[0], lone)
    _refused(run_cli, lone, f"split.count is {len(parts)} but the name is not <name>-00001-of-{len(parts):05d}.gguf")


def test_missing_part(single, tmp_path, run_cli):
    parts = gguf_split(single, str(tmp_path / "t"), 16)
    os.remove(parts[-1])
    _refused(run_cli, parts[0], f"split shard '{os.path.basename(parts[-1])}' is missing")


def test_parts_without_split_keys_warn(tmp_path, run_cli):
    """Files named as a split but carrying no split.* keys: read, with a warning that llama.cpp would
    read the first only."""
    def gguf(name: str) -> bytes:
        head = b"GGUF" + struct.pack("<IQQ", 3, 1, 0) + _str(name) + struct.pack("<IQIQ", 1, 16, 0, 0)
        return head + b"\0" * (-len(head) % 32) + b"\0" * 64

    (tmp_path / "m-00001-of-00002.gguf").write_bytes(gguf("a.weight"))
    (tmp_path / "m-00002-of-00002.gguf").write_bytes(gguf("b.weight"))
    rep = _json(run_cli, "inspect", str(tmp_path))
    assert rep["summary"]["n_tensors"] == 2
    assert [f["code"] for f in rep["findings"] if f["severity"] == "warning"] == ["gguf_split_unmarked"]


# -- llama.cpp's converter writes a split; llama.cpp loads it --------------------------------------------

@pytest.mark.interop
def test_llama_cpp_converter_split(family_oracle, tmp_path, run_cli):
    """convert_hf_to_gguf.py --split-max-tensors: the parts read like the unsplit bf16.gguf, and
    llama.cpp computes the same logits from the split as from the single file."""
    import families

    single = family_oracle("llama", "bf16.gguf")
    src = os.path.join(os.path.dirname(single), "bf16")
    out = str(tmp_path / "llama.gguf")
    cmd = [sys.executable, "-c", families._CONVERT, families.LLAMA_CPP, "", src, "--outfile", out, "--outtype", "bf16",
           "--split-max-tensors", "6"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, NO_LOCAL_GGUF="1"))
    assert r.returncode == 0, r.stderr[-2000:]
    parts = sorted(n for n in os.listdir(tmp_path) if n.endswith(".gguf"))
    assert len(parts) > 2 and parts[0] == f"llama-00001-of-{len(parts):05d}.gguf", parts
    _same_model(_json(run_cli, "inspect", str(tmp_path / parts[0])), _json(run_cli, "inspect", single))
    tokens = families.test_tokens(16)
    split_logits = families.llama_logits(str(tmp_path / parts[0]), tokens)
    assert np.array_equal(split_logits, families.llama_logits(single, tokens))
