"""A seeded, structure-aware mutator of checkpoints.

Mutations know the formats: they edit one key of a JSON side file (config.json, hf_quant_config.json,
the index) or a GGUF metadata value to a hostile value of the wrong type or range, one field of a
safetensors header entry, a tensor's shape or bytes (rebuilding a well-formed file around it, so the
mutant gets past the container checks into the readers and commands), a file's kind (FIFO, device
link, link out of the folder), or raw bytes. Every choice comes from one ``random.Random``, so a
(seed, case) pair rebuilds the same mutant.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import struct
from dataclasses import dataclass, field
from typing import Any, Callable

# -- hostile values ---------------------------------------------------------------------------------
_BIGINT = "\u0000BIGINT\u0000"      # placeholders written as raw JSON text after json.dumps
_DEEP = "\u0000DEEP\u0000"
_RAW = {json.dumps(_BIGINT): "1" + "0" * 5000, json.dumps(_DEEP): "[" * 3000 + "]" * 3000}

HOSTILE: list[Any] = [
    None, float("nan"), float("inf"), -float("inf"), 1e300, -1e300, -1, 0, 1, 2, 7, 2**31, 2**32 - 1, 2**63, 2**64,
    -(2**63), 10**12, 1e12, 2**30, 65_536, 1_000_000, 1 << 22, 1_024, 1.5, 0.0, -0.0, True, False, "", "x", "4", "nan", "\ud800", "a\x00b", "\x1b[2J",
    [], [0], [1, 2], ["x"], [None], [float("nan")], {}, {"a": 1}, {"": None}, _BIGINT, _DEEP, "x" * 200_000,
]

# keys worth hitting on purpose (a random walk over a big config rarely reaches them)
SENSITIVE_KEYS = (
    "num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim", "global_head_dim",
    "num_global_key_value_heads", "vocab_size", "intermediate_size", "moe_intermediate_size", "num_experts",
    "top_k_experts", "sliding_window", "layer_types", "per_layer_config", "rope_parameters", "rope_theta",
    "partial_rotary_factor", "max_position_embeddings", "tie_word_embeddings", "attention_k_eq_v",
    "num_kv_shared_layers", "model_type", "architectures", "text_config", "quantization_config", "producer",
    "quant_algo", "exclude_modules", "ignore", "targets", "num_bits", "group_size", "type", "dynamic",
    "config_groups", "weights", "input_activations", "kv_cache_scheme", "quant_method", "format", "weight_map",
    "metadata", "total_size", "quantization", "kv_cache_quant_algo", "rms_norm_eps", "enable_moe_block",
)

PATTERN_ATTACKS: list[Any] = [
    [r"re:([\w.]+)+!"], [r"re:(a|a)*$"], [r"re:(.*)*x"], [r"re:(x+x+)+y"], ["re:(?=x)y"], [r"re:(a)\1"],
    ["re:" + "(" * 3000 + ")" * 3000], ["re:x{1000}{1000}"], ["re:[" * 100], ["*" * 4000], ["[!" * 2000],
    [f"model.layers.{i}.mlp*" for i in range(20_000)], [f"re:.*layers\\.{i}\\..*" for i in range(300)],
    "x" * 200_000, 5, float("nan"), None, [5], [[]], ["re:(?i)LM_HEAD"], ["re:\\bmlp"], ["?" * 3000 + "!"],
]

DTYPES = ("BOOL", "U8", "I8", "U16", "I16", "U32", "I32", "U64", "I64", "F16", "BF16", "F32", "F64", "F8_E4M3",
          "F8_E5M2", "F8_E8M0", "F4", "F6_E2M3")
_DT_BITS = {"BOOL": 8, "U8": 8, "I8": 8, "U16": 16, "I16": 16, "U32": 32, "I32": 32, "U64": 64, "I64": 64, "F16": 16,
            "BF16": 16, "F32": 32, "F64": 64, "F8_E4M3": 8, "F8_E5M2": 8, "F8_E8M0": 8, "F4": 4, "F6_E2M3": 6}


def _dumps(obj: Any) -> bytes:
    text = json.dumps(obj, allow_nan=True, ensure_ascii=True)
    for k, v in _RAW.items():
        text = text.replace(k, v)
    return text.encode()


def _replace(path: str, data: bytes) -> None:
    """Write DATA as PATH without touching the seed the mutant's files are hard links of."""
    if os.path.lexists(path):
        os.unlink(path)
    with open(path, "wb") as fh:
        fh.write(data)


# -- safetensors ------------------------------------------------------------------------------------
def _regular(path: str) -> str:
    """PATH, if an earlier step left a regular file there (not a FIFO, a device link, a folder)."""
    if os.path.islink(path) or not os.path.isfile(path):
        raise ValueError(f"{path} is no longer a regular file")
    return path


def _read_st(path: str) -> tuple[dict, bytes]:
    with open(_regular(path), "rb") as fh:
        raw = fh.read()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def _write_st(path: str, header: Any, data: bytes) -> None:
    blob = header if isinstance(header, bytes) else _dumps(header)
    _replace(path, struct.pack("<Q", len(blob)) + blob + data)


def _rebuild_st(path: str, header: dict, data: bytes, change: Callable[[list], None]) -> None:
    """Re-lay a safetensors file contiguously after CHANGE edits its [name, dtype, shape, bytes] rows."""
    meta = header.pop("__metadata__", None)
    rows = []
    for name, e in header.items():
        b, en = e["data_offsets"]
        rows.append([name, e["dtype"], list(e["shape"]), data[b:en]])
    change(rows)
    out, blob, off = {}, [], 0
    if meta is not None:
        out["__metadata__"] = meta
    for name, dtype, shape, b in rows:
        out[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(b)]}
        blob.append(b)
        off += len(b)
    _write_st(path, out, b"".join(blob))


def _nbytes(dtype: str, shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n * _DT_BITS.get(dtype, 8) // 8


def _fit(b: bytes, n: int) -> bytes:
    return b[:n] if len(b) >= n else b + bytes(n - len(b))


# -- GGUF -----------------------------------------------------------------------------------------------
_GG = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


@dataclass
class GGUF:
    version: int
    kvs: list[list]             # [key, vtype, value]; an array value is (element type, [values])
    tensors: list[list]         # [name, ne list, type id, offset]
    data: bytes                 # the data section (offsets are relative to it)
    align: int = 32
    counts: tuple[int, int] | None = None  # (tensor count, kv count) to write instead of the real ones


def _gg_read_value(buf: bytes, pos: int, vt: int) -> tuple[Any, int]:
    if vt in _GG:
        s = struct.Struct("<" + _GG[vt])
        return s.unpack_from(buf, pos)[0], pos + s.size
    if vt == 8:
        (n,) = struct.unpack_from("<Q", buf, pos)
        return buf[pos + 8:pos + 8 + n].decode("utf-8", "surrogateescape"), pos + 8 + n
    if vt == 9:
        et, n = struct.unpack_from("<IQ", buf, pos)
        pos += 12
        vals = []
        for _ in range(n):
            v, pos = _gg_read_value(buf, pos, et)
            vals.append(v)
        return (et, vals), pos
    raise ValueError(vt)


def read_gguf(path: str) -> GGUF:
    with open(_regular(path), "rb") as fh:
        buf = fh.read()
    version, nt, nkv = struct.unpack_from("<IQQ", buf, 4)
    pos, kvs = 24, []
    for _ in range(nkv):
        key, pos = _gg_read_value(buf, pos, 8)
        (vt,) = struct.unpack_from("<I", buf, pos)
        val, pos = _gg_read_value(buf, pos + 4, vt)
        kvs.append([key, vt, val])
    tensors = []
    for _ in range(nt):
        name, pos = _gg_read_value(buf, pos, 8)
        (nd,) = struct.unpack_from("<I", buf, pos)
        ne = list(struct.unpack_from(f"<{nd}Q", buf, pos + 4))
        pos += 4 + 8 * nd
        tid, off = struct.unpack_from("<IQ", buf, pos)
        pos += 12
        tensors.append([name, ne, tid, off])
    align = next((v for k, t, v in kvs if k == "general.alignment" and isinstance(v, int)), 32) or 32
    start = -(-pos // align) * align
    return GGUF(version, kvs, tensors, buf[start:], align)


def _gg_value(vt: int, v: Any) -> bytes:
    if vt in _GG:
        code = _GG[vt]
        if code in "fd":
            return struct.pack("<" + code, float(v))
        if code == "?":
            return struct.pack("<?", bool(v))
        lim = 1 << (struct.calcsize(code) * 8)
        v = int(v) % lim if code.isupper() else ((int(v) + lim // 2) % lim) - lim // 2
        return struct.pack("<" + code, v)
    if vt == 8:
        b = str(v).encode("utf-8", "surrogateescape")
        return struct.pack("<Q", len(b)) + b
    if vt == 9:
        et, vals = v
        return struct.pack("<IQ", et, len(vals)) + b"".join(_gg_value(et, x) for x in vals)
    return b""


def write_gguf(path: str, g: GGUF) -> None:
    nt, nkv = g.counts or (len(g.tensors), len(g.kvs))
    out = [b"GGUF", struct.pack("<IQQ", g.version, nt, nkv)]
    for key, vt, v in g.kvs:
        out += [_gg_value(8, key), struct.pack("<I", vt), _gg_value(vt, v)]
    for name, ne, tid, off in g.tensors:
        out += [_gg_value(8, name), struct.pack("<I", len(ne)), struct.pack(f"<{len(ne)}Q", *[d % 2**64 for d in ne]),
                struct.pack("<IQ", tid % 2**32, off % 2**64)]
    head = b"".join(out)
    align = g.align if isinstance(g.align, int) and 0 < g.align < 1 << 20 else 32
    head += bytes(-len(head) % align)
    _replace(path, head + g.data)


GGUF_HOSTILE: list[tuple[int, Any]] = [
    (4, 0), (4, 1), (4, 2**32 - 1), (6, float("nan")), (6, float("inf")), (5, -5), (10, 2**64 - 1), (11, -1),
    (7, True), (8, "x"), (8, "a\x00b"), (12, 1e300), (9, (4, [0, 1])), (9, (6, [float("nan")])), (9, (8, ["a"])),
    (9, (9, [(4, [1])])), (9, (4, list(range(5000)))), (9, (7, [True, False])), (2, 0), (1, -128),
]
GGUF_KEYS = ("block_count", "embedding_length", "attention.head_count", "attention.head_count_kv",
             "attention.key_length", "attention.value_length", "attention.key_length_swa",
             "attention.value_length_swa", "attention.sliding_window", "attention.sliding_window_pattern",
             "attention.shared_kv_layers", "expert_count", "expert_used_count", "expert_feed_forward_length",
             "context_length", "feed_forward_length", "vocab_size", "rope.dimension_count",
             "attention.kv_lora_rank", "rope.freq_base", "attention.layer_norm_rms_epsilon")


# -- the mutator --------------------------------------------------------------------------------------
@dataclass
class Mutant:
    path: str                    # what the commands are given (a folder or a .gguf file)
    folder: str                  # the checkpoint folder
    outside: str                 # a folder beside it, for links and index entries that leave it
    steps: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return "; ".join(self.steps)


def _hardlink_tree(src: str, dst: str) -> None:
    os.makedirs(dst)
    for n in os.listdir(src):
        s = os.path.join(src, n)
        try:
            os.link(s, os.path.join(dst, n))
        except OSError:
            shutil.copy2(s, os.path.join(dst, n))


class Mutator:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def make(self, seed_path: str, work: str, n_steps: int | None = None) -> Mutant:
        """A mutant of SEED_PATH under WORK (a fresh folder), after 1-3 mutations."""
        rng = self.rng
        folder = os.path.join(work, "ckpt")
        outside = os.path.join(work, "outside")
        os.makedirs(outside)
        with open(os.path.join(outside, "secret.txt"), "w") as fh:
            fh.write("SECRET=do-not-read\n")
        if os.path.isdir(seed_path):
            _hardlink_tree(seed_path, folder)
            path = folder
        else:
            os.makedirs(folder)
            path = os.path.join(folder, os.path.basename(seed_path))
            os.link(seed_path, path)
        m = Mutant(path, folder, outside)
        ops = self._ops(m)
        for _ in range(n_steps or rng.choice((1, 1, 1, 2, 2, 3))):
            name, fn, weight = rng.choices(ops, weights=[w for _, _, w in ops])[0]
            try:
                m.steps.append(f"{name}: {fn(m)}")
            except (OSError, ValueError, KeyError, IndexError, struct.error, json.JSONDecodeError, UnicodeError,
                    RecursionError, OverflowError, TypeError, ZeroDivisionError) as e:
                m.steps.append(f"{name}: skipped ({type(e).__name__})")  # an earlier step broke what this one edits
        return m

    # which mutations apply, with weights
    def _ops(self, m: Mutant) -> list[tuple[str, Callable[[Mutant], str], float]]:
        is_gguf = m.path.endswith(".gguf")
        ops: list[tuple[str, Callable[[Mutant], str], float]] = [
            ("file_kind", self.file_kind, 1.0), ("raw_bytes", self.raw_bytes, 1.0)]
        if is_gguf:
            ops += [("gguf_kv", self.gguf_kv, 6.0), ("gguf_tensor", self.gguf_tensor, 3.0),
                    ("gguf_header", self.gguf_header, 1.0), ("gguf_config_json", self.gguf_config_json, 2.0)]
        else:
            ops += [("json_key", self.json_key, 6.0), ("json_patterns", self.json_patterns, 2.0),
                    ("json_file", self.json_file, 1.0), ("st_entry", self.st_entry, 3.0),
                    ("st_rebuild", self.st_rebuild, 3.0), ("st_data", self.st_data, 2.0),
                    ("st_container", self.st_container, 1.5), ("index", self.index, 1.5)]
        return ops

    # -- helpers ----------------------------------------------------------------------------------
    def _files(self, m: Mutant, suffix: str | tuple[str, ...] = "") -> list[str]:
        return sorted(n for n in os.listdir(m.folder) if n.endswith(suffix)
                      and os.path.isfile(os.path.join(m.folder, n)) and not os.path.islink(os.path.join(m.folder, n)))

    def _pick(self, seq):
        return seq[self.rng.randrange(len(seq))]

    def _hostile(self) -> Any:
        v = self._pick(HOSTILE)
        return list(v) if isinstance(v, list) else dict(v) if isinstance(v, dict) else v

    # -- JSON side files -------------------------------------------------------------------------
    def _json_target(self, m: Mutant) -> tuple[str, Any]:
        names = self._files(m, ".json")
        name = self._pick(names)
        with open(os.path.join(m.folder, name), "rb") as fh:
            return name, json.load(fh)

    @staticmethod
    def _paths(obj: Any, limit: int = 4000) -> list[tuple[Any, Any]]:
        """(container, key) of every value in OBJ (breadth first, at most LIMIT)."""
        out, queue = [], [obj]
        while queue and len(out) < limit:
            c = queue.pop(0)
            items = c.items() if isinstance(c, dict) else enumerate(c) if isinstance(c, list) else ()
            for k, v in items:
                out.append((c, k))
                if isinstance(v, (dict, list)):
                    queue.append(v)
        return out

    def json_key(self, m: Mutant) -> str:
        rng = self.rng
        name, data = self._json_target(m)
        paths = self._paths(data)
        sens = [(c, k) for c, k in paths if isinstance(c, dict) and k in SENSITIVE_KEYS]
        if not paths:
            return f"{name}: empty"
        c, k = self._pick(sens) if sens and rng.random() < 0.6 else self._pick(paths)
        op = rng.random()
        old = c[k]
        if op < 0.6:
            c[k] = self._hostile()
            what = f"{k!r} -> {str(c[k])[:40]!r}"
        elif op < 0.7 and isinstance(c, dict):
            del c[k]
            what = f"delete {k!r}"
        elif op < 0.8 and isinstance(old, (int, float)) and not isinstance(old, bool) and math.isfinite(old):
            c[k] = self._pick([old + 1, old - 1, old * 2, -old, old // 2 if isinstance(old, int) else old / 2, old * 1000])
            what = f"{k!r}: {old} -> {c[k]}"
        elif op < 0.9:
            c[k] = [old] if rng.random() < 0.5 else str(old)[:100]
            what = f"{k!r} re-typed"
        else:
            c[k] = self._pick(PATTERN_ATTACKS)
            what = f"{k!r} -> a pattern attack"
        _replace(os.path.join(m.folder, name), _dumps(data))
        return f"{name}: {what}"

    def json_patterns(self, m: Mutant) -> str:
        name, data = self._json_target(m)
        spots = [(c, k) for c, k in self._paths(data) if isinstance(c, dict) and k in ("exclude_modules", "ignore",
                                                                                     "targets")]
        if not spots:
            return f"{name}: no pattern list"
        c, k = self._pick(spots)
        attack = self._pick(PATTERN_ATTACKS)
        if isinstance(attack, list) and isinstance(c[k], list) and self.rng.random() < 0.5:
            attack = c[k] + attack
        c[k] = attack
        _replace(os.path.join(m.folder, name), _dumps(data))
        return f"{name}: {k} -> {str(attack)[:60]}"

    def json_file(self, m: Mutant) -> str:
        names = self._files(m, ".json") or ["config.json"]
        name = self._pick(names)
        path = os.path.join(m.folder, name)
        kind = self.rng.randrange(9)
        if kind == 0:
            with open(_regular(path), "rb") as fh:
                raw = fh.read()
            _replace(path, raw[: self.rng.randrange(len(raw) + 1)])
            return f"{name}: truncated"
        if kind == 8:  # over the 64 MiB bound, sparse so it costs no disk
            _replace(path, b"{")
            with open(path, "r+b") as fh:
                fh.truncate(65 << 20)
            return f"{name}: 65 MiB"
        blob = [b"", b"{", b"[]", b"null", b"[" * 100_000, b'{"a": ' + b"9" * 5000 + b"}", b"\xff\xfe{}",
                b'{"num_hidden_layers": NaN}'][kind]
        _replace(path, blob)
        return f"{name}: replaced by {blob[:20]!r}"

    # -- safetensors ------------------------------------------------------------------------------
    def _st(self, m: Mutant) -> str:
        return self._pick(self._files(m, ".safetensors"))

    def st_entry(self, m: Mutant) -> str:
        rng = self.rng
        name = self._st(m)
        path = os.path.join(m.folder, name)
        header, data = _read_st(path)
        keys = [k for k in header if k != "__metadata__"]
        t = self._pick(keys)
        e = header[t]
        what = rng.randrange(6)
        if what == 0:
            e["dtype"] = self._pick(list(DTYPES) + [["U8"], 5, None, "X", "f32"])
        elif what == 1:
            s = list(e["shape"])
            e["shape"] = self._pick([[], [0], [-1], [2**40] * 3, ["a"], [1.5], s + [1], s[:-1], s[::-1], [0] + s,
                                     None, "x", [float("nan")]])
        elif what == 2:
            b, en = e["data_offsets"]
            e["data_offsets"] = self._pick([[0, 0], [-1, en], [b, en + 1], [en, b], [0, 2**64], [b + 1, en + 1],
                                            "x", [b], [b, en, 0], [_BIGINT, en]])
        elif what == 3:
            new = self._pick([t + "\x00", t + "\ud800", "a" * 5000, "", t.rsplit(".", 1)[0], t + "_2",
                              t.replace("weight_scale", "weight_scale_2"), "\x1b[2J" + t, t.replace(".", "/"),
                              self._pick(keys)])
            header[new] = header.pop(t)
            t = new
        elif what == 4:
            del header[t]
        else:
            header["__metadata__"] = self._pick([{"k": 1}, [1], {"k": {"d": [1] * 3}}, "x", {"k": "\ud800"}])
        _write_st(path, header, data)
        return f"{name}: entry {t[:40]!r} field {what}"

    def st_rebuild(self, m: Mutant) -> str:
        """A well-formed file whose contents lie about the model: reshaped, zero-size, re-typed,
        missing or extra tensors."""
        rng = self.rng
        name = self._st(m)
        path = os.path.join(m.folder, name)
        header, data = _read_st(path)
        desc = []

        def change(rows: list) -> None:
            i = rng.randrange(len(rows))
            r = rows[i]
            kind = rng.randrange(7)
            if kind == 0:   # same bytes, another shape
                n = _nbytes(r[1], r[2]) * 8 // _DT_BITS.get(r[1], 8)
                r[2] = self._pick([r[2][::-1], [n], [1] + r[2], r[2] + [1], [1, n]])
            elif kind == 1:  # zero-size
                r[2] = [0] + r[2][1:] if r[2] else [0]
                r[3] = b""
            elif kind == 2:  # another dtype, bytes resized
                r[1] = self._pick(DTYPES)
                r[3] = _fit(r[3], _nbytes(r[1], r[2]))
            elif kind == 3:  # grown or shrunk
                r[2] = [max(0, d + rng.choice((-1, 1, 16))) for d in r[2]] or [1]
                r[3] = _fit(r[3], _nbytes(r[1], r[2]))
            elif kind == 4:
                rows.pop(i)
            elif kind == 5:  # a copy under another name (a duplicate in another shard, or an orphan scale)
                rows.append([r[0] + self._pick(["_scale", ".weight_scale", "_2", ""]), r[1], list(r[2]), r[3]])
            else:           # 0-d / scalar
                r[2] = []
                r[3] = _fit(r[3], _nbytes(r[1], []))
            desc.append(f"{r[0][:50]} kind {kind}")

        _rebuild_st(path, header, data, change)
        return f"{name}: {', '.join(desc)}"

    def st_data(self, m: Mutant) -> str:
        name = self._st(m)
        path = os.path.join(m.folder, name)
        header, data = _read_st(path)
        t = self._pick([k for k in header if k != "__metadata__"])
        b, en = header[t]["data_offsets"]
        pat = self._pick([struct.pack("<f", float("nan")), struct.pack("<f", float("inf")), b"\0\0\0\0",
                          struct.pack("<f", -1.0), b"\xff", b"\x7f", b"\x80", struct.pack("<f", 1e-45),
                          struct.pack("<f", 3e38), bytes(self.rng.randrange(256) for _ in range(7))])
        n = en - b
        if n <= 0:
            return f"{name}: {t!r} is empty"
        body = (pat * (n // len(pat) + 1))[:n] if self.rng.random() < 0.7 else (pat + data[b + len(pat):en])[:n]
        _write_st(path, header, data[:b] + body + data[en:])
        return f"{name}: {t[:50]!r} bytes -> {pat[:4].hex()}"

    def st_container(self, m: Mutant) -> str:
        name = self._st(m)
        path = os.path.join(m.folder, name)
        with open(path, "rb") as fh:
            raw = fh.read()
        (n,) = struct.unpack("<Q", raw[:8])
        kind = self.rng.randrange(6)
        if kind == 0:
            new_n = self._pick([0, 1, n - 1, n + 1, len(raw), 2**63, 2**64 - 1, 100_000_001])
            raw = struct.pack("<Q", new_n) + raw[8:]
        elif kind == 1:
            raw = raw[: self.rng.randrange(len(raw))]
        elif kind == 2:
            raw += bytes(self.rng.randrange(1, 64))
        elif kind == 3:
            blob = self._pick([b"[]", b'{"__metadata__": 5}', b"[" * 50_000, b'{"a":' + b"1" * 5000 + b"}",
                               b"\xff\xfe", b'{"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}'])
            raw = struct.pack("<Q", len(blob)) + blob + raw[8 + n:]
        else:
            raw = bytearray(raw)
            for _ in range(self.rng.randrange(1, 8)):
                i = self.rng.randrange(8, 8 + n) if kind == 4 else self.rng.randrange(len(raw))
                raw[i] = self.rng.randrange(256)
            raw = bytes(raw)
        _replace(path, raw)
        return f"{name}: container kind {kind}"

    def index(self, m: Mutant) -> str:
        rng = self.rng
        idx = self._files(m, ".index.json")
        if not idx:
            # an index where there was none, pointing out of the folder
            shard = self._st(m)
            shutil.copyfile(_regular(os.path.join(m.folder, shard)), os.path.join(m.outside, "x.safetensors"))
            header, _ = _read_st(os.path.join(m.folder, shard))
            wm = {k: "../outside/x.safetensors" for k in header if k != "__metadata__"}
            _replace(os.path.join(m.folder, "model.safetensors.index.json"), _dumps({"weight_map": wm}))
            os.unlink(os.path.join(m.folder, shard))
            return "index to ../outside"
        name = idx[0]
        with open(_regular(os.path.join(m.folder, name))) as fh:
            data = json.load(fh)
        wm = data["weight_map"]
        t = self._pick(sorted(wm))
        real = wm[t]
        kind = rng.randrange(10)
        if kind == 0:
            shutil.copyfile(_regular(os.path.join(m.folder, real)), os.path.join(m.outside, "x.safetensors"))
            for k in [k for k, v in wm.items() if v == real]:
                wm[k] = "../outside/x.safetensors"
            os.unlink(os.path.join(m.folder, real))
        elif kind == 1:
            os.mkfifo(os.path.join(m.outside, "fifo.safetensors"))
            wm[t] = "../outside/fifo.safetensors"
        elif kind == 2:
            wm[t] = self._pick(["/etc/passwd", "", None, 5, ["x"], "a\x00b.safetensors", "missing.safetensors",
                                "\ud800.safetensors", "sub/../" + real, "./" + real, "C:\\x.safetensors"])
        elif kind == 3:
            del wm[t]
        elif kind == 4:
            wm[t + ".phantom"] = real
        elif kind == 5:
            other = self._pick(sorted(set(wm.values())))
            wm[t] = other
        elif kind == 6:
            data["weight_map"] = self._pick([[], {}, None, "x", {"a": {"b": 1}}])
        elif kind == 7:
            os.unlink(os.path.join(m.folder, real))
            os.mkfifo(os.path.join(m.folder, real))
        elif kind == 8:
            data["metadata"] = self._pick([{"total_size": -1}, {"total_size": float("nan")}, [1], "x"])
        else:
            _replace(os.path.join(m.folder, "other.safetensors.index.json"), _dumps({"weight_map": {t: "nope"}}))
        _replace(os.path.join(m.folder, name), _dumps(data))
        return f"{name}: kind {kind} on {t[:50]!r}"

    # -- files -------------------------------------------------------------------------------------
    def file_kind(self, m: Mutant) -> str:
        names = [n for n in os.listdir(m.folder)] + ["config.json", "tokenizer.json", "model.safetensors"]
        name = self._pick(sorted(set(names)))
        path = os.path.join(m.folder, name)
        kind = self.rng.randrange(8)
        if os.path.lexists(path):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                if kind == 3 and os.path.isfile(path) and not os.path.islink(path):
                    shutil.copyfile(path, os.path.join(m.outside, name))
                os.unlink(path)
        if kind == 0:
            os.mkfifo(path)
        elif kind == 1:
            os.symlink("/dev/zero", path)
        elif kind == 2:
            os.mkdir(path)
        elif kind == 3:
            if not os.path.exists(os.path.join(m.outside, name)):
                shutil.copyfile(os.path.join(m.outside, "secret.txt"), os.path.join(m.outside, name))
            os.symlink(os.path.join("..", "outside", name), path)
        elif kind == 4:
            os.symlink("/proc/self/environ", path)
        elif kind == 5:
            os.symlink(os.path.join(m.folder, "nowhere"), path)
        elif kind == 6:
            os.symlink(os.path.join(m.outside, "secret.txt"), path)
        # kind 7: deleted
        return f"{name} -> kind {kind}"

    def raw_bytes(self, m: Mutant) -> str:
        names = self._files(m)
        if not names:
            return "no file"
        name = self._pick(names)
        path = os.path.join(m.folder, name)
        with open(path, "rb") as fh:
            raw = bytearray(fh.read())
        if not raw:
            return f"{name}: empty"
        head = min(len(raw), 4096)
        for _ in range(self.rng.randrange(1, 16)):
            i = self.rng.randrange(head) if self.rng.random() < 0.8 else self.rng.randrange(len(raw))
            raw[i] = self.rng.randrange(256)
        _replace(path, bytes(raw))
        return f"{name}: bytes flipped"

    # -- GGUF ------------------------------------------------------------------------------------
    def _gguf(self, m: Mutant) -> tuple[str, GGUF]:
        path = m.path if m.path.endswith(".gguf") else os.path.join(m.folder, self._files(m, ".gguf")[0])
        return path, read_gguf(path)

    def gguf_kv(self, m: Mutant) -> str:
        rng = self.rng
        path, g = self._gguf(m)
        arch = next((v for k, t, v in g.kvs if k == "general.architecture"), "llama")
        keys = [f"{arch}.{k}" for k in GGUF_KEYS] + ["general.architecture", "general.alignment", "general.file_type",
                                                     "tokenizer.ggml.tokens", "general.quantized_by"]
        key = self._pick(keys) if rng.random() < 0.7 else self._pick(g.kvs)[0]
        vt, v = self._pick(GGUF_HOSTILE)
        hit = [kv for kv in g.kvs if kv[0] == key]
        op = rng.random()
        if op < 0.15 and hit:
            g.kvs.remove(hit[0])
            what = "deleted"
        elif op < 0.25 and hit:
            g.kvs.append(list(hit[0]))
            what = "duplicated"
        else:
            if hit:
                hit[0][1:] = [vt, v]
            else:
                g.kvs.append([key, vt, v])
            what = f"-> type {vt} {str(v)[:30]}"
        write_gguf(path, g)
        return f"{key} {what}"

    def gguf_config_json(self, m: Mutant) -> str:
        path, g = self._gguf(m)
        hit = [kv for kv in g.kvs if kv[0] == "nvfp4tools.config_json"]
        if not hit:
            g.kvs.append(["nvfp4tools.config_json", 8, self._pick(["{", "[]", "[" * 5000, '{"x": ' + "9" * 5000 + "}"])])
            write_gguf(path, g)
            return "config_json added"
        cfg = json.loads(hit[0][2])
        paths = [(c, k) for c, k in self._paths(cfg) if isinstance(c, dict) and k in SENSITIVE_KEYS] or self._paths(cfg)
        c, k = self._pick(paths)
        c[k] = self._hostile()
        hit[0][2] = _dumps(cfg).decode("utf-8", "surrogateescape")
        write_gguf(path, g)
        return f"config_json {k!r} -> {str(c[k])[:30]!r}"

    def gguf_tensor(self, m: Mutant) -> str:
        rng = self.rng
        path, g = self._gguf(m)
        t = self._pick(g.tensors)
        what = rng.randrange(6)
        if what == 0:
            t[0] = self._pick([t[0] + "\x00", "\x1b[2J", "a" * 5000, "", self._pick(g.tensors)[0], t[0] + ".scale"])
        elif what == 1:
            t[1] = self._pick([[], [1] * 5, [0] + t[1][1:], [2**40] * 3, t[1][::-1], t[1] + [1], [t[1][0]]])
        elif what == 2:
            t[2] = self._pick([0, 1, 2, 8, 12, 30, 39, 40, 99, 2**31])
        elif what == 3:
            t[3] = self._pick([t[3] + 1, t[3] + 32, 2**63, 0, t[3] - 32])
        elif what == 4:
            g.tensors.remove(t)
        else:
            g.tensors.append(list(t))
        write_gguf(path, g)
        return f"tensor {t[0][:40]!r} field {what}"

    def gguf_header(self, m: Mutant) -> str:
        path, g = self._gguf(m)
        kind = self.rng.randrange(4)
        if kind == 0:
            g.counts = (self._pick([2**63, len(g.tensors) + 1, 0]), len(g.kvs))
        elif kind == 1:
            g.counts = (len(g.tensors), self._pick([2**63, len(g.kvs) + 1, 0]))
        elif kind == 2:
            g.version = self._pick([1, 4, 0x03000000, 2])
        else:
            g.data = g.data[: self.rng.randrange(len(g.data) + 1)]
        write_gguf(path, g)
        return f"header kind {kind}"
