"""safetensors container: header parsing with the checks a hostile file needs, and discovery
of a checkpoint's files (single file, directory, sharded with an index).

Spec (huggingface/safetensors README, "Format"): 8-byte little-endian header length N, N bytes
of JSON ``{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}}``, then
the byte buffer. Offsets are relative to the buffer; the buffer must be entirely indexed with no
holes and no overlaps. The reference implementation caps the header at 100 MB. Nothing here reads
tensor bytes; stdlib only.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import sys
import threading
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from nvfp4tools.errors import FormatError, Nvfp4ToolsError, UnsupportedError

from . import validate
from ._dtypes import DTYPE_BITS

HEADER_MAX_BYTES = 100_000_000  # safetensors' own limit ("HeaderTooLarge", 100 MB)

_MAX_ELEMENTS = 1 << 50  # anything larger is a lying header, not a model

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


class RawTensor(NamedTuple):
    """One entry of a safetensors header, with its absolute byte range."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: str        # relative to the checkpoint root
    offset: int      # absolute offset in the file
    nbytes: int


@dataclass
class ParsedFile:
    file: str
    size: int
    tensors: dict[str, RawTensor]
    metadata: dict[str, str]


def _check_entry(rel: str, name: str, entry: Any, data_len: int) -> None:
    """Slow path: raise the precise error for one bad header entry."""
    where = f"{rel}: tensor '{name}'"
    if not isinstance(entry, dict):
        raise FormatError(f"{where}: header entry is not an object")
    dtype = entry.get("dtype")
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        raise UnsupportedError(f"{where}: unknown dtype {dtype!r}", hint=f"known: {', '.join(sorted(DTYPE_BITS))}")
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise FormatError(f"{where}: shape {shape!r} is not a list of non-negative integers")
    offs = entry.get("data_offsets")
    if (not isinstance(offs, list) or len(offs) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offs)):
        raise FormatError(f"{where}: data_offsets {offs!r} is not [begin, end]")
    begin, end = offs
    if begin < 0 or end < begin:
        raise FormatError(f"{where}: data_offsets [{begin}, {end}] are not ordered")
    if end > data_len:
        raise FormatError(f"{where}: data_offsets end {end} is past the end of the data buffer "
                          f"({data_len} bytes)", hint="the file is truncated or the header lies")
    numel = 1
    for d in shape:
        numel *= d
        if numel > _MAX_ELEMENTS:
            raise FormatError(f"{where}: shape {shape} has more than 2^50 elements")
    bits = numel * DTYPE_BITS[dtype]
    if bits % 8:
        raise FormatError(f"{where}: {numel} elements of {dtype} do not fill whole bytes")
    if end - begin != bits // 8:
        raise FormatError(f"{where}: byte count mismatch: dtype {dtype} shape {shape} needs "
                          f"{bits // 8} bytes, data_offsets give {end - begin}")


def parse_header(root: str, rel: str, *, trusted: bool = False) -> ParsedFile:
    """Parse and validate one safetensors file's header. Raises FormatError naming the problem.

    Only a regular file inside the checkpoint folder is opened (:func:`validate.open_member`);
    TRUSTED: REL is the file the user named, which may be a link to anywhere."""
    fd = validate.open_member(root, rel, trusted=trusted)
    try:
        size = os.fstat(fd).st_size
        with os.fdopen(fd, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise FormatError(f"{rel}: truncated file: {size} bytes, expected at least 8 (header length)")
            (n,) = struct.unpack("<Q", head)
            if n > HEADER_MAX_BYTES:
                raise FormatError(f"{rel}: header length {n} bytes exceeds the 100 MB limit safetensors allows",
                                  hint="the file is corrupt or not safetensors")
            if 8 + n > size:
                raise FormatError(f"{rel}: header length {n} runs past end of file (file is {size} bytes, "
                                  f"header needs {8 + n})", hint="the file is truncated; download it again")
            raw = fh.read(n)
    except OSError as e:
        raise FormatError(f"{rel}: cannot read: {e.strerror}") from None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FormatError(f"{rel}: header is not valid JSON ({e})") from None
    except (ValueError, RecursionError):  # an integer of more than 4,300 digits; nesting past the C stack
        raise FormatError(f"{rel}: header is not a safetensors header (an integer of thousands of digits "
                          "or JSON nested too deeply)") from None
    if not isinstance(header, dict):
        raise FormatError(f"{rel}: header is a JSON {type(header).__name__}, expected an object")
    data_start = 8 + n
    data_len = size - data_start
    meta = header.pop("__metadata__", None) or {}
    # a str -> str map (the reference implementation deserializes it as HashMap<String, String>)
    if not isinstance(meta, dict) or not all(isinstance(v, str) and validate.utf8(v) and validate.utf8(k)
                                             for k, v in meta.items()):
        raise FormatError(f"{rel}: __metadata__ is {validate.show(meta)}, expected an object of strings")
    if not all(len(k) <= validate.MAX_NAME_CHARS and k.isprintable() for k in header):  # C-level; ~50,000 names
        bad = next(k for k in header if not (len(k) <= validate.MAX_NAME_CHARS and k.isprintable()))
        validate.check_name(bad, rel)
    tensors: dict[str, RawTensor] = {}
    spans: list[tuple[int, int, str]] = []
    bits_of = DTYPE_BITS.get
    new = tuple.__new__  # RawTensor(...) without the NamedTuple's Python-level __new__ frame
    for name, entry in header.items():
        # Fast path first (this loop runs ~50,000 times on a full-size MoE checkpoint); any
        # irregularity falls through to _check_entry, which names what is wrong.
        try:
            dtype = entry["dtype"]
            shape = entry["shape"]
            begin, end = entry["data_offsets"]
            bits = bits_of(dtype)
            numel = 1
            for d in shape:
                if type(d) is not int or d < 0:
                    raise TypeError
                numel *= d
            ok = (bits is not None and type(begin) is int and type(end) is int and 0 <= begin <= end <= data_len
                  and numel <= _MAX_ELEMENTS and (numel * bits) % 8 == 0 and end - begin == numel * bits // 8)
        except Exception:
            ok = False
        if not ok:
            _check_entry(rel, name, entry, data_len)
            raise FormatError(f"{rel}: tensor '{name}': malformed header entry {entry!r}")  # pragma: no cover
        tensors[name] = new(RawTensor, (name, dtype, tuple(shape), rel, data_start + begin, end - begin))
        spans.append((begin, end, name))
    spans.sort()
    covered = 0
    for begin, end, name in spans:
        if begin < covered:
            raise FormatError(f"{rel}: tensor '{name}' data_offsets [{begin}, {end}] overlap the previous "
                              f"tensor (which ends at {covered})", hint="the header lies; the file is unsafe to load")
        if begin > covered:
            raise FormatError(f"{rel}: hole in the data buffer before tensor '{name}' (bytes {covered}..{begin} "
                              f"are not indexed; safetensors forbids holes)")
        covered = end
    if covered != data_len:
        raise FormatError(f"{rel}: data buffer is {data_len} bytes but tensors index {covered}",
                          hint="trailing bytes after the last tensor: the file is corrupt or not safetensors")
    return ParsedFile(rel, size, tensors, {str(k): v for k, v in meta.items()})


def parse_headers(root: str, files: list[str], trusted: str | None = None) -> list[ParsedFile]:
    """parse_header for every file, in order; errors are those of the first bad file. TRUSTED: the
    one file the user named (see :func:`parse_header`)."""
    return [parse_header(root, rel, trusted=rel == trusted) for rel in files]


@dataclass
class Source:
    """The files of a safetensors-based checkpoint, and its JSON side files."""

    root: str
    given: str
    files: list[str]
    config: dict[str, Any] = field(default_factory=dict)
    hf_quant_config: dict[str, Any] | None = None
    index: dict[str, str] | None = None   # tensor -> file, from model.safetensors.index.json
    trusted: str | None = None            # the one file the user named, read wherever it links to


# each JSON side file's schema check (formats/validate.py); any other name: an object, unchecked
_SIDE_SCHEMA = {"config.json": validate.config, "hf_quant_config.json": validate.hf_quant_config}


def _load_json(root: str, name: str) -> dict[str, Any] | None:
    """Side file NAME, bounded and checked against its schema; None when absent."""
    data = validate.read_json(root, name)
    if data is None:
        return None
    if name.endswith(".index.json"):
        return validate.index(data, name)
    if not isinstance(data, dict):
        raise FormatError(f"{name}: expected a JSON object, got {type(data).__name__}")
    check = _SIDE_SCHEMA.get(name)
    return check(data, name) if check else data


def _safe_member(root: str, rel: str, index_name: str) -> str:
    """An index may only name regular files inside the checkpoint folder."""
    if not isinstance(rel, str) or not rel or os.path.isabs(rel) or "\\" in rel:
        raise FormatError(f"{index_name}: shard name {validate.show(rel)} is not a relative file name")
    validate.check_name(rel, index_name, "shard name")
    real = os.path.realpath(os.path.join(root, rel))
    if not validate.inside(real, validate.allowed_roots(root)):
        raise FormatError(f"{index_name}: shard {rel!r} points outside the checkpoint folder",
                          hint="refusing to read it; fix the index")
    return os.path.normpath(rel)


def declaration(path: str) -> tuple[dict[str, Any], dict[str, Any] | None] | None:
    """Cheap sniffing: (config.json, hf_quant_config.json) of a safetensors checkpoint, or None.

    Reads only the two small JSON files; never the index or a header.
    """
    from .hub import fetch, is_hub_id
    if is_hub_id(path):
        src = fetch(path)[0]
        return src.config, src.hf_quant_config
    if os.path.isfile(path):
        if not path.endswith(".safetensors"):
            return None
        root = os.path.dirname(os.path.abspath(path))
    elif os.path.isdir(path):
        root = path
        if not any(n.endswith((".safetensors", ".safetensors.index.json")) for n in os.listdir(root)):
            return None
    else:
        return None
    try:
        return _load_json(root, "config.json") or {}, _load_json(root, "hf_quant_config.json")
    except FormatError:
        return {}, None  # let read() report the broken file precisely


def discover(path: str) -> Source | None:
    """Find the safetensors files of PATH (or a Hub id); None when PATH holds none (another format may)."""
    from .hub import fetch, is_hub_id
    if is_hub_id(path):
        src = fetch(path)[0]
        validate.config(src.config or {}, f"{path}/config.json")
        if src.hf_quant_config is not None:
            validate.hf_quant_config(src.hf_quant_config, f"{path}/hf_quant_config.json")
        return src
    if os.path.isfile(path):
        if not path.endswith(".safetensors"):
            return None
        root = os.path.dirname(os.path.abspath(path))
        src = Source(root, path, [os.path.basename(path)], trusted=os.path.basename(path))
        src.config = _load_json(root, "config.json") or {}
        src.hf_quant_config = _load_json(root, "hf_quant_config.json")
        return src
    if not os.path.isdir(path):
        return None
    root = os.path.abspath(path)
    names = sorted(os.listdir(root))
    index_names = [n for n in names if n.endswith(".safetensors.index.json")]
    src = Source(root, path, [])
    if index_names:
        index_name = "model.safetensors.index.json" if "model.safetensors.index.json" in index_names else index_names[0]
        idx = _load_json(root, index_name) or {}
        wm = idx.get("weight_map")
        if not isinstance(wm, dict) or not wm:
            raise FormatError(f"{index_name}: no weight_map object")
        try:
            rels = set(wm.values())
        except TypeError:  # an unhashable shard name (a list, an object): _safe_member names it
            rels = set()
            for rel in wm.values():
                _safe_member(root, rel, index_name)
        checked = {rel: _safe_member(root, rel, index_name) for rel in rels}
        if all(k == v for k, v in checked.items()):
            mapping: dict[str, str] = wm  # already normalised: no per-tensor rewrite (~50,000 names)
        else:
            mapping = {tname: checked[rel] for tname, rel in wm.items()}
        files = sorted(set(checked.values()))
        for rel in files:
            if not os.path.lexists(os.path.join(root, rel)):  # (a FIFO or a folder: parse_header says so)
                n_in = sum(1 for v in mapping.values() if v == rel)
                raise FormatError(f"{index_name}: shard '{rel}' is missing ({n_in} tensors are mapped to it)",
                                  hint="download every shard listed in the index")
        src.files, src.index = files, mapping
    else:
        src.files = [n for n in names if n.endswith(".safetensors")]
    if not src.files:
        pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
        if pickles:
            raise UnsupportedError(
                f"{path}: only pickle checkpoints found ({', '.join(pickles[:3])}); nvfp4tools never unpickles files",
                hint="convert them to safetensors with the model's own tooling first")
        return None
    src.config = _load_json(root, "config.json") or {}
    src.hf_quant_config = _load_json(root, "hf_quant_config.json")
    return src


def parse_all(src: Source, meta_out: dict[str, str] | None = None) -> tuple[dict[str, RawTensor], int, list[str]]:
    """Parse every file's header. Returns (tensors by name, bytes on disk, index warnings);
    each file's ``__metadata__`` map is stored in META_OUT under its file name when given."""
    from .hub import fetch, is_hub_id
    if is_hub_id(src.given):
        _, raw, total = fetch(src.given)
        return dict(raw), total, []
    tensors: dict[str, RawTensor] = {}
    total = 0
    notes: list[str] = []
    index = src.index
    for pf in parse_headers(src.root, src.files, src.trusted):
        rel = pf.file
        total += pf.size
        if meta_out is not None and pf.metadata:
            meta_out[rel] = pf.metadata
        # Set and map operations run in C: this is ~50,000 names on a full-size MoE checkpoint.
        dup = tensors.keys() & pf.tensors.keys()
        if dup:
            name = min(dup)
            raise FormatError(f"{rel}: tensor '{name}' also appears in {tensors[name].file}",
                              hint="duplicate tensor names across shards")
        if index is not None:
            mapped = set(map(index.get, pf.tensors))
            if mapped != {rel}:
                name = next(n for n in pf.tensors if index.get(n) not in (rel, None))  \
                    if mapped - {rel, None} else None
                if name is not None:
                    raise FormatError(f"model.safetensors.index.json: tensor '{name}' is mapped to "
                                      f"'{index[name]}' but found in '{rel}'")
        tensors.update(pf.tensors)
    if index is not None:
        absent = index.keys() - tensors.keys()
        if absent:
            name = min(absent)
            raise FormatError(f"model.safetensors.index.json: tensor '{name}' is mapped to '{index[name]}' "
                              f"but that shard does not contain it")
        extra = [n for n in tensors if n not in index] if len(tensors) != len(index) else []
        if extra:
            notes.append(f"{len(extra)} tensors are in the shards but not in the index (e.g. '{extra[0]}'); "
                         "loaders that follow the index will not see them")
    return tensors, total, notes
