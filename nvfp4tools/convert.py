"""``convert``: stream a checkpoint tensor by tensor through canonical quantized tensors into
another format's writer. No pair-specific converter code: readers yield :class:`Canon` objects,
writers (``formats/writers.py``) consume them.

Canonical forms:
* NVFP4: HF-order E2M1 codes, E4M3 block-scale bytes (never re-rounded), the per-tensor global
  as stored (value + convention) and its multiplier, input scale likewise;
* int4 group-symmetric: int8 values in [-8, 7], group scales with their dtype, group size
  (compressed-tensors pack-quantized; GGUF Q4_0 = group 32 with an fp16 scale, ``q = nibble - 8``);
* raw: any other tensor's stored array.

Exact paths never touch a code or a block-scale byte; what changes is layout (names, nibble
order, stacking), and the global's convention (ModelOpt multiplier <-> compressed-tensors
divisor), solved bit-exactly as described in :func:`reciprocal_exact`.
"""

from __future__ import annotations

import collections
import json
import math
import os
import shutil
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from ._lazy import LazyModule
from .early_copy import EarlyCopy, begin_early_copy, check_destination, temp_dir_for
from ._teardown import keeping, leave
from .errors import FormatError, Nvfp4ToolsError, UnsupportedError, UsageError
from .filecopy import copy_once
from .formats._st_writer import nbytes_of
from .io import PartReader, decode_values
from .model import Checkpoint, TensorInfo

# numpy only where arrays are built: a lossless NVFP4 conversion between ModelOpt and
# compressed-tensors copies bytes and converts per-tensor scalars in plain Python, and never
# pays numpy's import (nvfp4tools/_lazy.py)
np = LazyModule("numpy")

SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
              "chat_template.json", "chat_template.jinja", "generation_config.json", "preprocessor_config.json",
              "processor_config.json", "added_tokens.json", "vocab.json", "merges.txt")
DEFAULT_SHARD_BYTES = 5 * 10**9              # GGUF sources: one file, cut into shards of this size
EXACT_META_KEY = "nvfp4tools.exact_globals"   # safetensors __metadata__: original fp32 bits of reciprocated scales


_F32 = struct.Struct("<f")


def f32s_bytes(vals) -> bytes:
    """float32 values (already representable) as little-endian bytes."""
    return _F32.pack(vals[0]) if len(vals) == 1 else struct.pack(f"<{len(vals)}f", *vals)


def f32_round(x: float) -> float:
    """A Python float rounded to the nearest float32 (ties to even), overflowing to infinity."""
    try:
        return _F32.unpack(_F32.pack(x))[0]
    except OverflowError:
        return math.copysign(math.inf, x)


def _recip32(x: float) -> float:
    # the correctly rounded float32 quotient: rounding 1/x first to binary64 and then to binary32
    # is innocuous for division because 53 >= 2 x 24 + 2 (Figueroa, "When is double rounding
    # innocuous?", 1995), so no numpy is needed for thousands of per-tensor scalars
    return f32_round(1.0 / x) if x != 0.0 else math.copysign(math.inf, x)


def reciprocal_exact(x: float, original: float | None = None) -> float:
    """The float32 reciprocal of a float32 value, and the way back bit-exactly.

    ``fp32(1/fp32(1/s))`` is not always ``s`` (1 ulp off for some values: vLLM #42549). Writers
    emit the correctly rounded ``fp32(1/s)``, byte-identical to compressed-tensors' own converter,
    and record the original bits of every value whose reciprocal does not round-trip in the
    output's metadata; the reverse conversion takes the recorded value when its reciprocal equals
    the stored one, so ModelOpt -> compressed-tensors -> ModelOpt is byte-identical.
    """
    x = float(x)
    if original is not None and _recip32(float(original)) == x:
        return float(original)
    return _recip32(x)


_READERS: dict[str, Any] = {}   # one open PartReader per checkpoint root during a conversion


def _reader(ckpt: Checkpoint) -> PartReader:
    r = _READERS.get(ckpt.root)
    if r is None:
        r = _READERS[ckpt.root] = PartReader(ckpt.root)
    return r


_VALUES: dict[tuple[str, str, int], bytes] = {}   # (root, file, offset) -> stored bytes, per conversion


def part_bytes(ckpt: Checkpoint, part) -> bytes:
    """A small part's stored bytes (a per-tensor scale), read once per conversion: the plan, the
    writer and the verification each need the source's thousands of 4-byte globals."""
    k = (ckpt.root, part.file, part.offset)
    v = _VALUES.get(k)
    if v is None:
        v = _VALUES[k] = _reader(ckpt).read(part)
    return v


def part_values(ckpt: Checkpoint, part) -> list[float]:
    """part_bytes, decoded."""
    return decode_values(part, part_bytes(ckpt, part))


_MULTS: dict[tuple[str, str], dict[str, bytes]] = {}   # (root, tensor) -> scalar_mults, per conversion


def _forget(root: str) -> None:
    """Drop the cached values of the checkpoint at ROOT (an output about to be verified: what is
    checked is read from the file, never remembered from an earlier look)."""
    for cache in (_VALUES, _MULTS):
        for k in [k for k in cache if k[0] == root]:
            del cache[k]


def scalar_mults(ckpt: Checkpoint, t: TensorInfo, exact: dict[str, float]) -> dict[str, bytes]:
    """float32 bytes of a tensor's canonical global and input multipliers (one per tensor, or one
    per expert for stacked experts), by role; plain Python, no numpy. Once per tensor and
    conversion (the writer and the verification both need the source's)."""
    k = (ckpt.root, t.name)
    out = _MULTS.get(k)
    if out is None:
        out = _MULTS[k] = _scalar_mults(ckpt, t, exact)
    return out


def _scalar_mults(ckpt: Checkpoint, t: TensorInfo, exact: dict[str, float]) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for p in t.parts:
        if p.role not in ("global_scale", "input_scale"):
            continue
        vals = part_values(ckpt, p)
        if p.stored_as == "divisor":
            original = exact.get(p.key) if len(vals) == 1 else None  # recorded for single values only
            vals = [reciprocal_exact(v, original) for v in vals]   # float32 values
        elif p.stored_dtype not in ("F32", "BF16", "F16"):
            vals = [f32_round(v) for v in vals]
        out[p.role] = f32s_bytes(vals)
    return out


@dataclass
class Canon:
    name: str                    # canonical HF name (module + ".weight", or a fused parameter)
    kind: str                    # "nvfp4" | "int4" | "raw"
    shape: tuple[int, ...]
    role: str = "other"
    proj: str | None = None
    layer: int | None = None
    expert: int | None = None
    # nvfp4
    codes: np.ndarray | None = None
    scale_bytes: np.ndarray | None = None
    global_mult: np.ndarray | None = None    # float32 multiplier(s), shape [] or [E]
    input_mult: np.ndarray | None = None
    # int4
    q: np.ndarray | None = None
    group_scales: np.ndarray | None = None
    group: int | None = None
    # raw
    array: np.ndarray | None = None
    dtype: str | None = None                 # safetensors dtype of array
    kv: dict[str, np.ndarray] = field(default_factory=dict)  # "k_scale"/"v_scale" riding on k/v proj
    source_key: str = ""


# -- reading canonical tensors ---------------------------------------------------------------------

def _exact_meta(ckpt: Checkpoint) -> dict[str, float]:
    """Original fp32 values recorded by a previous nvfp4tools convert (see reciprocal_exact)."""
    per_file = ckpt.metadata.get("safetensors_metadata") if isinstance(ckpt.metadata, dict) else None
    out: dict[str, float] = {}
    for meta in (per_file or {}).values():
        if isinstance(meta, dict) and EXACT_META_KEY in meta:
            try:
                for k, hexbits in json.loads(meta[EXACT_META_KEY]).items():
                    out[k] = struct.unpack("<f", bytes.fromhex(hexbits))[0]
            except (ValueError, TypeError):
                pass
    return out


def iter_canonical(ckpt: Checkpoint) -> Iterator[Canon]:
    exact = _exact_meta(ckpt)
    for t in ckpt.tensors.values():
        yield canon_of(ckpt, t, exact)


def canon_of(ckpt: Checkpoint, t: TensorInfo, exact: dict[str, float] | None = None) -> Canon:
    """One logical tensor in canonical form (reads its bytes)."""
    from .tensors import canonical_nvfp4, load_part

    exact = _exact_meta(ckpt) if exact is None else exact
    base = dict(name=t.name, shape=tuple(t.shape), role=t.role, proj=t.proj, layer=t.layer, expert=t.expert)
    data = t.part("data")
    if t.scheme.name == "nvfp4":
        c = canonical_nvfp4(ckpt, t)
        g = c.global_scale
        gp = t.part("global_scale")
        if gp is not None and gp.stored_as == "divisor":
            g = np.array([reciprocal_exact(v, exact.get(gp.key)) for v in c.stored_global.reshape(-1)], np.float32)
        inp = c.input_scale
        ip = t.part("input_scale")
        if ip is not None and ip.stored_as == "divisor":
            raw = np.asarray(load_part(ckpt.root, ip), np.float32).reshape(-1)
            inp = np.array([reciprocal_exact(v, exact.get(ip.key)) for v in raw], np.float32)
        # one multiplier per tensor (shape ()), or one per expert ([E]) for stacked experts
        g = np.asarray(g, np.float32)
        g = g.reshape(()) if g.size == 1 and len(t.shape) < 3 else g.reshape(-1)
        if inp is not None:
            inp = np.asarray(inp, np.float32)
            inp = inp.reshape(()) if inp.size == 1 and len(t.shape) < 3 else inp.reshape(-1)
        kv = {p.key.rsplit(".", 1)[-1]: np.asarray(load_part(ckpt.root, p), np.float32)
              for p in t.parts if p.role == "kv_scale"}
        return Canon(kind="nvfp4", codes=c.codes, scale_bytes=c.scale_bytes, global_mult=g, input_mult=inp,
                     kv=kv, source_key=data.key, **base)
    if t.scheme.element == "int4" and data.stored_dtype == "I32" and t.part("zero_point") is None \
            and t.part("g_idx") is None:
        from nvfp4tools.kernels_ref.int4 import unpack_int32_to_int4
        q = unpack_int32_to_int4(np.asarray(load_part(ckpt.root, data)), t.shape[-1])
        bs = t.part("block_scale")
        return Canon(kind="int4", q=q, group_scales=_raw_array(ckpt, bs), group=t.shape[-1] // bs.stored_shape[-1],
                     dtype=bs.stored_dtype, source_key=data.key, **base)
    if t.scheme.name == "q4_0":
        from nvfp4tools.kernels_ref.ggml_quants import q4_0_split
        codes, d = q4_0_split(np.asarray(load_part(ckpt.root, data)).reshape(t.shape[:-1] + (-1,)))
        return Canon(kind="int4", q=(codes.astype(np.int8) - 8), group_scales=d.view(np.uint16), group=32,
                     dtype="F16", source_key=data.key, **base)
    if not t.scheme.quantized:
        return Canon(kind="raw", array=_raw_array(ckpt, data), dtype=_st_dtype(data.stored_dtype),
                     source_key=data.key, **base)
    return Canon(kind="unsupported:" + t.scheme.name, source_key=data.key, **base)


def _st_dtype(d: str) -> str:
    return {"F32": "F32", "F16": "F16", "BF16": "BF16", "F64": "F64", "I32": "I32", "I64": "I64"}.get(d, d)


_BITS_VIEW = {"BF16": "uint16", "F16": "uint16", "F8_E4M3": "uint8", "F8_E5M2": "uint8", "F8_E8M0": "uint8"}


def _raw_array(ckpt: Checkpoint, part) -> np.ndarray:
    """Stored array with its bits kept (16-bit floats as uint16), so bytes are copied exactly."""
    from .tensors import load_part

    path = os.path.join(ckpt.root, part.file)
    view = _BITS_VIEW.get(part.stored_dtype)
    if view is not None:
        n = part.nbytes // np.dtype(view).itemsize
        return np.memmap(path, view, "r", part.offset, (n,)).reshape(part.stored_shape)
    return np.asarray(load_part(ckpt.root, part))


# -- planning --------------------------------------------------------------------------------------

TARGETS = ("modelopt", "compressed-tensors", "gguf")


@dataclass
class Job:
    sources: list[str]                       # source TensorInfo names, in the order their bytes are used
    outs: list[Any]                          # formats.layouts.Out
    exact: bool
    action: str                              # "copy", "renibble", "reciprocal", "stack", "split", "quantize", ...
    fuse: str | None = None                  # "gate_up" | "down" | None
    note: str = ""
    global_override: float | None = None     # restored original global (undoing a GGUF fold)
    raw_override: np.ndarray | None = None   # restored tensor bytes (e.g. Gemma 4 per_expert_scale)
    direct: Any = field(default=False, repr=False, compare=False)  # _direct_parts, once computed

    @property
    def nbytes(self) -> int:
        return sum(o.nbytes if hasattr(o, "gtype") else nbytes_of(o.dtype, o.shape) for o in self.outs)


@dataclass
class Plan:
    src: Checkpoint
    to: str
    jobs: list[Job]
    exact_meta: dict[str, str] = field(default_factory=dict)  # output key -> original fp32 bits (hex)
    notes: list[str] = field(default_factory=list)

    @property
    def lossless(self) -> bool:
        return all(j.exact for j in self.jobs)

    def as_dict(self) -> dict[str, Any]:
        sizes = [j.nbytes for j in self.jobs]
        counts = collections.Counter((j.action, j.exact) for j in self.jobs)
        return {"schema": "nvfp4tools/convert-plan/v1", "source": self.src.source, "from": self.src.format,
                "to": self.to, "lossless": self.lossless, "n_jobs": len(self.jobs),
                "n_output_tensors": sum(len(j.outs) for j in self.jobs),
                "output_tensor_bytes": sum(sizes), "notes": self.notes,
                "actions": [{"action": a, "exact": e, "tensors": n} for (a, e), n in sorted(counts.items())],
                "tensors": [{"sources": j.sources[:3] + ([f"... +{len(j.sources) - 3}"] if len(j.sources) > 3 else []),
                             "outputs": [o.key for o in j.outs][:6], "action": j.action,
                             "exact": j.exact, "bytes": n, "note": j.note} for j, n in zip(self.jobs, sizes)]}


def _expert_group_key(t: TensorInfo) -> tuple[str, str] | None:
    if t.role != "experts" or t.expert is None or t.proj not in ("gate", "up", "down"):
        return None
    prefix = t.name.split(f".experts.{t.expert}.")[0]
    return prefix, ("down" if t.proj == "down" else "gate_up")


QUANTIZE_ROLES = ("attention", "mlp", "experts", "shared_expert")


def plan(src: Checkpoint, to: str, *, experts: str | None = None, allow_lossy: bool = False,
         quantize: str | None = None) -> Plan:
    from nvfp4tools.formats.layouts import LAYOUTS

    _close_caches()   # a new conversion: no values or handles from an earlier one (files may have changed)
    if to not in TARGETS:
        raise UsageError(f"unknown target format {to!r}", hint=f"targets: {', '.join(TARGETS)}")
    if to == "gguf":
        from nvfp4tools.formats.gguf_writer import plan_gguf
        return plan_gguf(src, allow_lossy=allow_lossy, quantize=quantize)
    layout = LAYOUTS[to]
    p = Plan(src, to, [])
    tensors = list(src.tensors.values())
    if quantize is not None and not allow_lossy:
        raise UsageError("--quantize requantizes weights: pass --allow-lossy as well")
    if quantize is not None and quantize not in ("nvfp4", "int4"):
        raise UsageError(f"--quantize {quantize}: safetensors targets take nvfp4 or int4")
    if quantize == "int4" and to == "modelopt":
        raise UsageError("ModelOpt checkpoints hold NVFP4 here: use --quantize nvfp4, or --to compressed-tensors")
    unsupported = sorted({t.scheme.name for t in tensors if t.scheme.quantized and not _supported(t, to)})
    if unsupported and not allow_lossy:
        raise UnsupportedError(
            f"{src.source}: cannot convert {', '.join(unsupported)} tensors to {to} losslessly",
            hint=f"lossless paths to {to}: " + ("NVFP4 (ModelOpt, compressed-tensors, GGUF)" if to == "modelopt" else
                                                 "NVFP4; int4 group-symmetric (pack-quantized, GGUF Q4_0)")
            + "; pass --allow-lossy to requantize")
    if src.format == "gguf":
        return _plan_from_gguf(src, p, layout, experts)
    groups: dict[tuple[str, str], list[TensorInfo]] = {}
    if experts == "fused":
        for t in tensors:
            k = _expert_group_key(t)
            if k:
                groups.setdefault(k, []).append(t)
    done: set[tuple[str, str]] = set()
    target_q = quantize or ("nvfp4" if to == "modelopt" else "int4")
    for t in tensors:
        lossy = allow_lossy and (len(t.shape) == 2 or (len(t.shape) == 3 and t.role == "experts")) and (
            (t.scheme.quantized and not _supported(t, to))
            or (quantize is not None and not t.scheme.quantized and t.role in QUANTIZE_ROLES))
        if lossy:
            p.jobs.append(_quantize_job(layout, t, target_q))
            continue
        k = _expert_group_key(t) if experts == "fused" else None
        if k is not None:
            if k in done:
                continue
            done.add(k)
            p.jobs.append(_fuse_job(src, layout, k, groups[k], to))
            continue
        if experts == "per-expert" and t.role == "experts" and len(t.shape) == 3 and t.proj in ("gate_up", "down"):
            p.jobs.extend(_split_jobs(src, layout, t, to))
            continue
        p.jobs.append(_single_job(src, layout, t, to))
    _exact_globals(src, p)
    return p


def _quantize_job(layout, t: TensorInfo, scheme: str) -> Job:
    """Requantize with the reference quantizers: NVFP4 (ModelOpt-exact, W4A16: no calibrated input
    scale exists) or int4 group 32 symmetric with bf16 scales (compressed-tensors' recipe)."""
    k = t.shape[-1]
    if scheme == "nvfp4":
        if k % 16:
            raise UnsupportedError(f"{t.name}: in_features {k} is not a multiple of 16 (NVFP4 block)")
        outs = layout.nvfp4(t.name, t.shape, False)   # fused 3-D experts keep their parameter name
    else:
        if k % 32:
            raise UnsupportedError(f"{t.name}: in_features {k} is not a multiple of 32 (int4 group)")
        if len(t.shape) != 2:
            raise UnsupportedError(f"{t.name}: int4 quantization of stacked experts is not supported; "
                                   "use --quantize nvfp4 or --experts per-expert on a per-expert source")
        outs = layout.int4(t.name, t.shape, 32, "BF16")
    return Job([t.name], outs, False, f"quantize->{scheme}", note=f"from {t.scheme.name}")


def _plan_from_gguf(src: Checkpoint, p: Plan, layout, experts: str | None) -> Plan:
    """GGUF -> safetensors: names from the ``nvfp4tools.hf_names`` record an nvfp4tools-written
    GGUF carries; stacked experts split per expert; a Gemma 4 down-projection fold undone from the
    recorded originals (without them the folded value stays in weight_scale_2 and per_expert_scale
    would be 1: equivalent math, not the original bytes, so it is refused)."""
    from nvfp4tools.formats.layouts import Out

    names = src.metadata.get("nvfp4tools.hf_names")
    if not isinstance(names, list) or not src.config:
        raise UnsupportedError(
            f"{src.source}: this GGUF carries no record of its safetensors names and config.json",
            hint="nvfp4tools converts GGUF files it wrote itself back to safetensors; for other GGUF files "
                 "convert the original safetensors checkpoint instead")
    hf: dict[str, list[str]] = {}
    for entry in names:
        g, _, rest = str(entry).partition("=")
        hf[g] = rest.split(",") if rest else []
    for t in src.tensors.values():
        if t.name == "rope_freqs.weight" or t.name not in hf:
            continue
        outs_names = hf[t.name]
        if len(outs_names) > 1:   # stacked experts -> one output per expert
            restore = src.metadata.get(f"nvfp4tools.restore.{t.name}.scale")
            want_all = outs_names[-1].partition("|")[2]   # the record's dtype applies to every expert
            for e, entry in enumerate(outs_names):
                name, _, want = entry.partition("|")
                want = want or want_all
                if t.scheme.name == "nvfp4":
                    outs = layout.nvfp4(name, t.shape[1:], t.part("input_scale") is not None)
                elif t.scheme.name == "q4_0":
                    if not hasattr(layout, "int4"):
                        raise UnsupportedError(f"{t.name}: Q4_0 has no exact {p.to} form, and requantizing "
                                               "straight from a GGUF is not built",
                                               hint="convert to compressed-tensors first (Q4_0 -> pack-quantized "
                                                    f"W4A16 is exact), then --to {p.to} --allow-lossy")
                    outs = layout.int4(name, t.shape[1:], 32, want or "F16")
                else:
                    outs = [Out(name, t.part("data").stored_dtype, t.shape[1:], "raw")]
                p.jobs.append(Job([t.name], outs, True, "split", note=f"expert {e} rows 0:{t.shape[1]}",
                                  global_override=float(restore[e]) if restore else None))
            continue
        if t.scheme.name == "q4_0" and not hasattr(layout, "int4"):
            raise UnsupportedError(f"{t.name}: Q4_0 has no exact {p.to} form, and requantizing straight from a "
                                   "GGUF is not built",
                                   hint="convert to compressed-tensors first (Q4_0 -> pack-quantized W4A16 is exact), "
                                        f"then --to {p.to} --allow-lossy")
        job = _single_job(src, layout, t, p.to)
        hf_name, _, want_dtype = outs_names[0].partition("|")
        if job.outs[0].what == "raw":
            dtype = want_dtype or job.outs[0].dtype
            job.outs = [Out(hf_name, dtype, job.outs[0].shape, "raw")]
            job.action = "copy" if dtype == t.part("data").stored_dtype else f"{t.part('data').stored_dtype}->{dtype}"
        elif job.outs[0].what == "int4" and want_dtype:
            old_base = t.name[: -len(".weight")]
            new_base = hf_name[: -len(".weight")]
            job.outs = [Out(o.key.replace(old_base, new_base, 1), want_dtype if o.what == "int4_scales" else o.dtype,
                            o.shape, o.what) for o in job.outs]
        else:
            old_base = t.name[: -len(".weight")] if t.name.endswith(".weight") else t.name
            new_base = hf_name[: -len(".weight")] if hf_name.endswith(".weight") else hf_name
            job.outs = [Out(o.key.replace(old_base, new_base, 1), o.dtype, o.shape, o.what) for o in job.outs]
        p.jobs.append(job)
    for k, v in src.metadata.items():
        if k.startswith("nvfp4tools.restore.") and k.endswith(".router.per_expert_scale"):
            name = k[len("nvfp4tools.restore."):]
            arr = np.asarray(v, np.float32)
            bits = (arr.view(np.uint32) >> 16).astype(np.uint16)   # recorded from bf16: exact
            p.jobs.append(Job([], [Out(name, "BF16", (arr.size,), "raw")], True, "restore", raw_override=bits))
    return p


def _supported(t: TensorInfo, to: str) -> bool:
    if t.scheme.name == "nvfp4":
        return True
    if to == "compressed-tensors" and t.scheme.name in ("q4_0",) :
        return True
    if to == "compressed-tensors" and t.scheme.element == "int4" and t.part("zero_point") is None \
            and t.part("g_idx") is None and t.part("data").stored_dtype == "I32":
        return True
    return False


def _single_job(src: Checkpoint, layout, t: TensorInfo, to: str) -> Job:
    from nvfp4tools.formats.layouts import Out

    if t.scheme.name == "nvfp4":
        kv = tuple(sorted(p.key.rsplit(".", 1)[-1] for p in t.parts if p.role == "kv_scale"))
        outs = layout.nvfp4(t.name, t.shape, t.part("input_scale") is not None, kv)
        g = t.part("global_scale")
        conv = "reciprocal" if (g is not None and ((g.stored_as == "divisor") != (to == "compressed-tensors"))) else "copy"
        return Job([t.name], outs, True, "renibble" if t.part("data").stored_dtype == "NVFP4" else conv)
    if t.scheme.element == "int4" or t.scheme.name == "q4_0":
        bs = t.part("block_scale")
        group = 32 if t.scheme.name == "q4_0" else t.shape[-1] // bs.stored_shape[-1]
        sdt = "F16" if t.scheme.name == "q4_0" else bs.stored_dtype
        return Job([t.name], layout.int4(t.name, t.shape, group, sdt), True,
                   "q4_0->int4" if t.scheme.name == "q4_0" else "copy")
    d = t.part("data")
    key = t.name if not (d.stored_dtype in ("F32", "F16", "BF16") and src.format == "gguf") else t.name
    return Job([t.name], [Out(key, d.stored_dtype if d.stored_dtype in _ST_OK else "F32", tuple(t.shape), "raw")],
               True, "copy")


_ST_OK = {"F32", "F16", "BF16", "F64", "I8", "I16", "I32", "I64", "U8", "BOOL", "F8_E4M3", "F8_E5M2"}


def _fuse_job(src: Checkpoint, layout, key: tuple[str, str], members: list[TensorInfo], to: str) -> Job:
    from nvfp4tools.formats.layouts import Out

    prefix, kind = key
    E = max(t.expert for t in members) + 1
    by = {(t.expert, t.proj): t for t in members}
    order = []
    for e in range(E):
        for proj in (("gate", "up") if kind == "gate_up" else ("down",)):
            if (e, proj) not in by:
                raise FormatError(f"{src.source}: expert {e} of '{prefix}' has no {proj}_proj; cannot fuse")
            order.append(by[(e, proj)])
    first = order[0]
    rows = sum(by[(0, p)].shape[0] for p in (("gate", "up") if kind == "gate_up" else ("down",)))
    shape = (E, rows, first.shape[1])
    name = f"{prefix}.experts.{'gate_up_proj' if kind == 'gate_up' else 'down_proj'}"
    if first.scheme.name == "nvfp4":
        outs = layout.nvfp4(name, shape, first.part("input_scale") is not None)
    elif not first.scheme.quantized:
        outs = [Out(name, first.part("data").stored_dtype, shape, "raw")]
    else:
        raise UnsupportedError(f"fusing {first.scheme.name} experts is not supported")
    return Job([t.name for t in order], outs, True, "stack", fuse=kind)


def _split_jobs(src: Checkpoint, layout, t: TensorInfo, to: str) -> list[Job]:
    from nvfp4tools.formats.layouts import Out

    E, rows, cols = t.shape
    prefix = t.name.rsplit(".experts.", 1)[0]
    projs = ("gate", "up") if t.proj == "gate_up" else ("down",)
    per = rows // len(projs)
    jobs = []
    for e in range(E):
        for i, proj in enumerate(projs):
            name = f"{prefix}.experts.{e}.{proj}_proj.weight"
            if t.scheme.name == "nvfp4":
                outs = layout.nvfp4(name, (per, cols), t.part("input_scale") is not None)
            else:
                outs = [Out(name, t.part("data").stored_dtype, (per, cols), "raw")]
            jobs.append(Job([t.name], outs, True, "split", note=f"expert {e} rows {i * per}:{(i + 1) * per}"))
    return jobs


def _exact_globals(src: Checkpoint, p: Plan) -> None:
    """Record original fp32 values whose reciprocal does not round-trip (see reciprocal_exact)."""
    if p.to != "compressed-tensors":
        return
    for j in p.jobs:
        for name in j.sources:
            t = src.tensors[name]
            for role, what in (("global_scale", "global"), ("input_scale", "input")):
                part = t.part(role)
                if part is None or part.stored_as != "multiplier" or part.stored_dtype != "F32":
                    continue
                vals = part_values(src, part)
                if j.action == "split" and len(vals) > 1:
                    vals = vals[int(j.note.split()[1]):][:1]   # this job's expert
                if len(vals) != 1:
                    continue
                v = vals[0]
                if _F32.pack(reciprocal_exact(reciprocal_exact(v))) != _F32.pack(v):
                    out = next((o.key for o in j.outs if o.what == what), None)
                    if out is not None:
                        p.exact_meta[out] = _F32.pack(v).hex()


# -- writing ---------------------------------------------------------------------------------------

def _nvfp4_chunks(c: Canon, outs, to: str) -> dict[str, bytes]:
    from nvfp4tools.kernels_ref.fp4 import pack_nibbles_hf
    from nvfp4tools.formats.layouts import f32_bytes

    out: dict[str, bytes] = {}
    for o in outs:
        if o.what == "codes":
            out[o.key] = pack_nibbles_hf(c.codes).tobytes()
        elif o.what == "scales":
            out[o.key] = np.ascontiguousarray(c.scale_bytes, np.uint8).tobytes()
        elif o.what in ("global", "input"):
            m = c.global_mult if o.what == "global" else c.input_mult
            if m is None:
                raise FormatError(f"{c.name}: no {o.what} scale to write")
            out[o.key] = _mult_bytes(np.asarray(m, np.float32).reshape(-1).tolist(), o, to, c.name)
        elif o.what.startswith("kv:"):
            out[o.key] = f32_bytes(c.kv[o.what[3:]].reshape(o.shape))
    return out


def _mult_bytes(vals, o, to: str, name: str) -> bytes:
    """float32 multipliers (one, or one per expert) as output O stores them: reciprocals for
    compressed-tensors (divisor convention; the correctly rounded float32 quotient, see
    _recip32), one value broadcast over O's shape."""
    n = math.prod(o.shape)
    if to == "compressed-tensors":
        vals = [_recip32(v) for v in vals]
    if len(vals) != n:
        if len(vals) != 1:
            raise FormatError(f"{name}: {len(vals)} {o.what} scales for output '{o.key}' of shape {list(o.shape)}")
        vals = list(vals) * n
    return f32s_bytes(vals)


_SCALARS: dict[tuple, list[tuple[str, bytes]]] = {}   # (root, tensor, output keys) -> scalar_chunks, per conversion


def scalar_chunks(src: Checkpoint, t: TensorInfo, outs, to: str, exact: dict[str, float]) -> list[tuple[str, bytes]]:
    """_scalar_chunks, once per tensor and conversion: the verification compares the file with
    the bytes the writer wrote (the same function of the same source values; what the output's
    scalars mean is checked on its own, through scalar_mults of the re-read output)."""
    k = (src.root, t.name, tuple(o.key for o in outs))
    out = _SCALARS.get(k)
    if out is None:
        out = _SCALARS[k] = list(_scalar_chunks(src, t, outs, to, exact))
    return out


def _scalar_chunks(src: Checkpoint, t: TensorInfo, outs, to: str, exact: dict[str, float]) -> Iterator[tuple[str, bytes]]:
    """The per-tensor scalars of an NVFP4 tensor whose codes and scales are copied (global and
    input multipliers in the target's convention, k/v scales), in plain Python: thousands of
    4-byte values, for which numpy's per-call cost is most of the time. The multipliers go
    through _mult_bytes, as _nvfp4_chunks' do."""
    mults = None
    for o in outs:
        n = math.prod(o.shape)
        if o.what in ("global", "input"):
            if mults is None:
                mults = scalar_mults(src, t, exact)
            b = mults.get("global_scale" if o.what == "global" else "input_scale")
            if b is None:
                raise FormatError(f"{t.name}: no {o.what} scale to write")
            yield o.key, _mult_bytes(struct.unpack(f"<{len(b) // 4}f", b), o, to, t.name)
        elif o.what.startswith("kv:"):
            name = o.what[3:]
            part = next((p for p in t.parts if p.role == "kv_scale" and p.key.rsplit(".", 1)[-1] == name), None)
            if part is None:
                raise FormatError(f"{t.name}: no {name} to write")
            vals = [f32_round(v) for v in part_values(src, part)]
            if len(vals) != n:
                raise FormatError(f"{t.name}: {len(vals)} values in '{part.key}', output '{o.key}' holds {n}")
            yield o.key, f32s_bytes(vals)


def _job_chunks(src: Checkpoint, job: Job, to: str, exact: dict[str, float]) -> Iterator[tuple[str, int, bytes]]:
    """(output key, byte offset inside that tensor, bytes) for one job, a source tensor at a time."""

    if job.action == "stack":
        # per-expert tensors into [E, rows, cols]: expert e's rows land at their offset
        members = [src.tensors[n] for n in job.sources]
        per_e = 2 if job.fuse == "gate_up" else 1
        offs: dict[str, int] = {o.key: 0 for o in job.outs}
        globals_: dict[int, list[np.ndarray]] = {}
        inputs: dict[int, list[np.ndarray]] = {}
        for i, t in enumerate(members):
            c = canon_of(src, t, exact)
            if c.kind == "raw":
                b = np.ascontiguousarray(c.array).tobytes()
                o = job.outs[0]
                yield o.key, offs[o.key], b
                offs[o.key] += len(b)
                continue
            for o in job.outs:
                if o.what == "codes" or o.what == "scales":
                    b = _nvfp4_chunks(c, [o], to)[o.key]
                    yield o.key, offs[o.key], b
                    offs[o.key] += len(b)
            globals_.setdefault(t.expert, []).append(np.asarray(c.global_mult, np.float32).reshape(-1))
            if c.input_mult is not None:
                inputs.setdefault(t.expert, []).append(np.asarray(c.input_mult, np.float32).reshape(-1))
        if globals_:
            g_out = []
            for e in sorted(globals_):
                vals = np.concatenate(globals_[e])
                if per_e == 2 and vals[0] != vals[1]:
                    raise UnsupportedError(
                        f"{job.sources[2 * e]}: gate and up of expert {e} have different global scales "
                        f"({vals[0]!r} vs {vals[1]!r}); one fused gate_up_proj tensor holds one global per expert",
                        hint="keep --experts per-expert, or requantize gate/up with a shared global (ModelOpt "
                             "sync_moe_gate_up_amax) first")
                g_out.append(vals[0])
            i_out = [np.max(np.concatenate(inputs[e])) for e in sorted(inputs)] if inputs else None
            fake = Canon(job.outs[0].key, "nvfp4", (), global_mult=np.array(g_out, np.float32),
                         input_mult=np.array(i_out, np.float32) if i_out else None)
            for o in job.outs:
                if o.what in ("global", "input"):
                    yield o.key, 0, _nvfp4_chunks(fake, [o], to)[o.key]
        return
    if job.action == "restore":
        yield job.outs[0].key, 0, np.ascontiguousarray(job.raw_override).tobytes()
        return
    if job.action.startswith("quantize->"):
        yield from _quantize_chunks(src, job, to)
        return
    t = src.tensors[job.sources[0]]
    direct = _direct_parts(t, job)
    if direct is not None:
        # same bytes in both layouts (HF nibble order, linear E4M3 scales, int32 words, raw tensors):
        # copied in bounded chunks without decoding; only the per-tensor scalars are converted
        small = [o for o in job.outs if o not in direct]
        for o, part in direct.items():
            yield from _copy_part(src, part, o.key)
        if small:
            for k, b in scalar_chunks(src, t, small, to, exact):
                yield k, 0, b
        return
    c = canon_of(src, t, exact)
    if job.action == "split":
        e = int(job.note.split()[1])
        lo, hi = (int(x) for x in job.note.split()[-1].split(":"))
        if c.kind == "raw":
            yield job.outs[0].key, 0, np.ascontiguousarray(c.array[e, lo:hi]).tobytes()
            return
        if c.kind == "int4":
            sub4 = Canon(c.name, "int4", (hi - lo, t.shape[2]), q=c.q[e, lo:hi], group_scales=c.group_scales[e, lo:hi],
                         group=c.group, dtype=c.dtype)
            one = Job([t.name], job.outs, True, "copy")
            yield from _int4_chunks(sub4, one)
            return
        sub = Canon(job.outs[0].key, "nvfp4", (hi - lo, t.shape[2]), codes=c.codes[e, lo:hi],
                    scale_bytes=c.scale_bytes[e, lo:hi], global_mult=np.asarray(c.global_mult).reshape(-1)[e % max(1, np.asarray(c.global_mult).size)].reshape(()),
                    input_mult=None if c.input_mult is None else np.asarray(c.input_mult).reshape(-1)[e % max(1, np.asarray(c.input_mult).size)].reshape(()))
        if job.global_override is not None:
            sub.global_mult = np.float32(job.global_override).reshape(())
        for k, b in _nvfp4_chunks(sub, job.outs, to).items():
            yield k, 0, b
        return
    if c.kind == "nvfp4":
        for k, b in _nvfp4_chunks(c, job.outs, to).items():
            yield k, 0, b
    elif c.kind == "int4":
        yield from _int4_chunks(c, job)
    elif c.kind == "raw":
        a = c.array
        want = job.outs[0].dtype
        if want == "F32" and a.dtype != np.float32:
            a = np.asarray(a, np.float32)
        elif want == "BF16" and a.dtype == np.float32:
            from nvfp4tools.kernels_ref.bf16 import f32_to_bf16_bits_exact
            a = f32_to_bf16_bits_exact(a)
            if a is None:
                raise UnsupportedError(f"{c.name}: F32 values are not all bf16: narrowing to the original BF16 "
                                       "would round", hint="the GGUF was modified after nvfp4tools wrote it")
        yield job.outs[0].key, 0, np.ascontiguousarray(a).tobytes()
    else:
        raise UnsupportedError(f"{t.name}: {c.kind} cannot be written to {to}")


_CHUNK = 16 * 2**20          # --verify full compares in pieces of this size
# How often the main thread looks at the early copy while it waits for it (progress, the
# verification's next tensor). 5 ms, not 50: on the 2-vCPU VMs we measure on, a 2.9 GiB copy beside
# a thread that wakes every 5 ms took 1.02-1.25 s (median 1.10) against 1.17-2.49 (1.40) alone, and
# the conversion gained the same (bench/RESULTS.md). Why is not established (the vCPU's idle
# exits while the copy waits on writeback are the guess); the wakeups cost nothing measurable.
WAIT_TICK = 0.005
_COPY_REQUEST = 0x7FFFF000   # Linux's MAX_RW_COUNT: the most one copy_file_range call moves
_DIRECT = {"codes": "data", "scales": "block_scale", "int4": "data", "int4_scales": "block_scale", "shape": "shape",
           "raw": "data"}


def _direct_parts(t: TensorInfo, job: Job):
    """Outputs whose bytes are exactly a stored part of the source (None: decode needed)."""
    if job.direct is False:   # (the writer and the verification both ask)
        job.direct = _find_direct_parts(t, job)
    return job.direct


def _find_direct_parts(t: TensorInfo, job: Job):
    if job.action not in ("copy", "reciprocal"):
        return None
    out = {}
    for o in job.outs:
        role = _DIRECT.get(o.what)
        if role is None:
            continue
        part = t.part(role)  # type: ignore[arg-type]
        if part is None or part.stored_dtype != o.dtype or part.nbytes != _out_nbytes(o):
            return None
        if o.what == "codes" and part.stored_dtype != "U8":
            return None
        out[o] = part
    return out if out else None


def _out_nbytes(o) -> int:
    return nbytes_of(o.dtype, o.shape)


@dataclass(frozen=True)
class CopyFrom:
    """A byte range of a source file, copied in the kernel (copy_file_range) when possible."""

    path: str
    offset: int
    nbytes: int

    def __len__(self) -> int:
        return self.nbytes


def _copy_part(src: Checkpoint, part, key: str) -> Iterator[tuple[str, int, Any]]:
    got = _SIZES.get((src.root, part.file))
    if got is None:  # one stat per file, not per part (thousands of parts)
        path = os.path.join(src.root, part.file)
        got = _SIZES[(src.root, part.file)] = (path, os.path.getsize(path))
    path, size = got
    if size < part.offset + part.nbytes:
        raise FormatError(f"{part.file}: tensor '{part.key}' is truncated")
    yield key, 0, CopyFrom(path, part.offset, part.nbytes)


_SIZES: dict[tuple[str, str], tuple[str, int]] = {}   # (root, file) -> (path, size), per conversion


def _write_at(dst: int, pos: int, data: Any, fds: dict[str, int]) -> None:
    """Write bytes, or copy a CopyFrom range, at POS of the output file descriptor DST."""
    if not isinstance(data, CopyFrom):
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            done += os.pwrite(dst, view[done:], pos + done)
        return
    src = fds.get(data.path)
    if src is None:
        src = fds[data.path] = os.open(data.path, os.O_RDONLY)
    done = 0
    while done < data.nbytes:
        done += copy_once(src, dst, min(_COPY_REQUEST, data.nbytes - done), data.offset + done, pos + done,
                          data.path)


class _Writer:
    """Applies output operations in order on one background thread.

    copy_file_range and pwrite release the GIL, so while the kernel copies one run of tensors
    the main thread already reads, converts and checks the next ones (on a ModelOpt ->
    compressed-tensors conversion the Python work is a third of the kernel copy time and now
    hides behind it). Payloads waiting in the queue are bounded (MAX_PENDING bytes, always at
    least one), so memory stays flat whatever the model size. An error on the thread is raised
    in the main thread at the next submit() or at close().
    """

    MAX_PENDING = 128 * 2**20

    def __init__(self, dst: int, fds: dict[str, int]) -> None:
        self.dst, self.fds = dst, fds
        self.ops: collections.deque[tuple[int, Any, int]] = collections.deque()
        self.cv = threading.Condition()
        self.pending = 0
        self.error: BaseException | None = None
        self.closing = False
        self.thread = threading.Thread(target=self._loop, name="nvfp4tools-writer", daemon=True)
        self.thread.start()

    def submit(self, pos: int, data: Any) -> None:
        size = 0 if isinstance(data, CopyFrom) else len(data)
        with self.cv:
            while self.pending and self.pending + size > self.MAX_PENDING and self.error is None:
                self.cv.wait()
            if self.error is not None:
                raise self.error
            self.ops.append((pos, data, size))
            self.pending += size
            self.cv.notify_all()

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
                    _write_at(self.dst, pos, data, self.fds)
            except BaseException as e:  # noqa: BLE001  (re-raised in the main thread)
                with self.cv:
                    self.error = e
            with self.cv:
                self.pending -= size
                self.cv.notify_all()

    def close(self, abort: bool = False) -> None:
        """Wait until every operation is applied (or, with ABORT, drop the rest) and re-raise
        the thread's error."""
        with self.cv:
            if abort:
                self.ops.clear()
                self.pending = 0
            self.closing = True
            self.cv.notify_all()
        self.thread.join()
        if self.error is not None and not abort:
            raise self.error


class _CopyRuns:
    """Coalesces kernel copies: a copy that continues the previous one in both files extends it,
    and so does one separated from it by a gap of the same size in both files that pending small
    writes fill exactly (a 4-byte global scale that is rewritten, say): the gap's source bytes ride
    along in the copy and the small writes, applied after it, overwrite them. One copy_file_range
    per run instead of one per part: ModelOpt <-> compressed-tensors becomes a handful of calls
    instead of two per tensor. A write is never applied before a copy that covers its bytes (the
    writer applies operations in submission order)."""

    GAP = 64            # bytes of source that may ride along inside a run
    SMALL = 4096        # writes up to this size wait for the run to be copied
    MAX_RUN = 512 * 2**20  # a run this long goes to the writer at once: copying starts while
                           # later tensors are still being converted (one whole-file run would
                           # only start copying after the last tensor)

    def __init__(self, writer: _Writer):
        self.writer = writer
        self.run: list[Any] | None = None      # [path, src offset, dst pos, nbytes]
        self.small: dict[int, bytes] = {}      # dst pos -> bytes, applied after the run

    def _covered(self, start: int, n: int) -> bool:
        q = start
        while q < start + n:
            b = self.small.get(q)
            if b is None:
                return False
            q += len(b)
        return q == start + n

    def add(self, pos: int, data: Any) -> None:
        if isinstance(data, CopyFrom):
            r = self.run
            if r is not None and r[0] == data.path:
                gap = data.offset - (r[1] + r[3])
                if 0 <= gap <= self.GAP and pos - (r[2] + r[3]) == gap and self._covered(r[2] + r[3], gap):
                    r[3] += gap + data.nbytes
                    if r[3] >= self.MAX_RUN:
                        self.flush(partial=True)
                    return
            self.flush()
            self.run = [data.path, data.offset, pos, data.nbytes]
            if data.nbytes >= self.MAX_RUN:
                self.flush(partial=True)
        elif len(data) <= self.SMALL:
            self.small[pos] = bytes(data)
        else:
            self.flush()
            self.writer.submit(pos, data)

    def flush(self, partial: bool = False) -> None:
        """Submit the run, then the small writes. PARTIAL keeps back the small writes past the
        run's end: a later run may still copy over their bytes, so they must follow it."""
        end = None
        if self.run is not None:
            path, off, pos, n = self.run
            self.run = None
            self.writer.submit(pos, CopyFrom(path, off, n))
            end = pos + n
        if partial and end is not None:
            for q in [q for q in self.small if q < end]:
                self.writer.submit(q, self.small.pop(q))
            return
        for q, b in self.small.items():
            self.writer.submit(q, b)
        self.small.clear()


LOSSY_REPORT: list[dict[str, Any]] = []
_AMAX: dict[str, float] = {}
_FUSED_SIBLINGS = {"q": ("q", "k", "v"), "k": ("q", "k", "v"), "v": ("q", "k", "v"), "gate": ("gate", "up"),
                   "up": ("gate", "up")}


def _shared_global(src: Checkpoint, t: TensorInfo):
    """max amax over the fused q/k/v or gate/up siblings (same parent module), as fp32 global."""
    from nvfp4tools.kernels_ref.nvfp4 import global_scale_for
    from .tensors import dequantize

    sib = _FUSED_SIBLINGS.get(t.proj or "")
    if not sib or not t.name.endswith(".weight"):
        return None
    parent = t.name.rsplit(".", 2)[0]
    names = [f"{parent}.{p}_proj.weight" for p in sib if f"{parent}.{p}_proj.weight" in src.tensors]
    amax = 0.0
    for n in names:
        if n not in _AMAX:
            _AMAX[n] = float(np.max(np.abs(dequantize(src, src.tensors[n])))) if src.tensors[n].n_elements else 0.0
        amax = max(amax, _AMAX[n])
    return global_scale_for(np.float32(amax))


def _quantize_chunks(src: Checkpoint, job: Job, to: str) -> Iterator[tuple[str, int, bytes]]:
    from nvfp4tools.kernels_ref.fp4 import unpack_nibbles_hf
    from nvfp4tools.kernels_ref.int4 import quantize_int4_sym
    from nvfp4tools.kernels_ref.nvfp4 import dequantize_nvfp4, quantize_nvfp4
    from .tensors import dequantize

    t = src.tensors[job.sources[0]]
    w = dequantize(src, t).astype(np.float32)
    if job.action == "quantize->nvfp4":
        # one global per expert for stacked experts, as ModelOpt's per-expert quantizers give; q/k/v
        # and gate/up share one (the max amax), as ModelOpt's export makes them, since engines fuse
        # them and take the max without requantizing block scales
        shared = _shared_global(src, t) if w.ndim == 2 else None
        qs = [quantize_nvfp4(w[e]) for e in range(w.shape[0])] if w.ndim == 3 else [quantize_nvfp4(w, shared)]
        back = np.stack([dequantize_nvfp4(q) for q in qs]) if w.ndim == 3 else dequantize_nvfp4(qs[0])
        g = np.array([q.global_scale for q in qs], np.float32)
        c = Canon(t.name, "nvfp4", tuple(t.shape),
                  codes=np.stack([unpack_nibbles_hf(q.packed) for q in qs]).reshape(t.shape),
                  scale_bytes=np.stack([q.block_scale for q in qs]).reshape(t.shape[:-1] + (-1,)),
                  global_mult=g if w.ndim == 3 else g.reshape(()))
        for k, b in _nvfp4_chunks(c, job.outs, to).items():
            yield k, 0, b
    else:
        import ml_dtypes
        qv, sc = quantize_int4_sym(w, 32, ml_dtypes.bfloat16)
        back = qv.astype(np.float32) * np.repeat(sc.astype(np.float32), 32, axis=-1)
        c = Canon(t.name, "int4", tuple(t.shape), q=qv, group_scales=sc.view(np.uint16), group=32, dtype="BF16")
        yield from _int4_chunks(c, job)
    err = back.astype(np.float64) - w
    sig = float(np.sum(w.astype(np.float64) ** 2))
    noise = float(np.sum(err ** 2))
    LOSSY_REPORT.append({"tensor": t.name, "from": t.scheme.name, "to": job.action.split("->")[1],
                         "max_abs_err": float(np.max(np.abs(err))) if err.size else 0.0,
                         "rel_rms_err": (noise / sig) ** 0.5 if sig else 0.0,
                         "sqnr_db": 10 * math.log10(sig / noise) if noise and sig else None})


def _int4_chunks(c: Canon, job: Job) -> Iterator[tuple[str, int, bytes]]:
    from nvfp4tools.kernels_ref.bf16 import f32_to_bf16_bits_exact
    from nvfp4tools.kernels_ref.int4 import pack_int4_to_int32

    for o in job.outs:
        if o.what == "int4":
            yield o.key, 0, pack_int4_to_int32(c.q).tobytes()
        elif o.what == "int4_scales":
            sc = np.ascontiguousarray(c.group_scales)
            if o.dtype == "BF16" and c.dtype == "F16":   # back to the recorded bf16: exact or refused
                sc = f32_to_bf16_bits_exact(sc.view(np.float16).astype(np.float32))
                if sc is None:
                    raise UnsupportedError(f"{c.name}: fp16 scales are not all bf16 values")
            yield o.key, 0, sc.tobytes()
        elif o.what == "shape":
            yield o.key, 0, struct.pack("<%dq" % len(c.shape), *c.shape)


class _Progress:
    def __init__(self, total: int) -> None:
        self.total, self.done, self.t0 = total, 0, time.monotonic()
        self.tty = sys.stderr.isatty()
        self.shown = 0.0

    def add(self, n: int) -> None:
        self.done += n
        if not self.tty:
            return
        now = time.monotonic()
        if now - self.shown < 0.1 and self.done < self.total:  # a line per 0.1 s, not per tensor
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


def _shard(jobs: list[Job], max_bytes: int | None, src: Checkpoint) -> list[list[Job]]:
    """Output shards: at most MAX_BYTES each, or (None) as the source's files are sharded (a job
    goes with its first source tensor's file; a GGUF source, one file by nature, is cut at 5 GB)."""
    if max_bytes is None and src.format == "gguf":
        max_bytes = DEFAULT_SHARD_BYTES
    if max_bytes is None:
        by_file: dict[str, list[Job]] = {}
        loose: list[Job] = []   # jobs without a source tensor go with the first shard
        for j in jobs:
            t = src.tensors.get(j.sources[0]) if j.sources else None
            if t is not None and t.parts:
                by_file.setdefault(t.parts[0].file, []).append(j)
            else:
                loose.append(j)
        out = [by_file[f] for f in sorted(by_file)] or [[]]
        out[0].extend(loose)
        return out
    shards: list[list[Job]] = [[]]
    acc = 0
    for j in jobs:
        if shards[-1] and acc + j.nbytes > max_bytes:
            shards.append([])
            acc = 0
        shards[-1].append(j)
        acc += j.nbytes
    return shards


def write_safetensors_plan(p: Plan, out_dir: str, max_shard_bytes: int | None,
                           while_copying: Callable[[Callable[[str, int], None] | None], None] | None = None,
                           early: EarlyCopy | None = None) -> list[str]:
    """Write the plan's shards. WHILE_COPYING runs once every header, the index and every
    operation are handed to the writer, while the kernel is still copying the last shard (the
    files already have their final sizes, so their headers can be read); it gets READY(file, end),
    which returns once the output's bytes before END are final, where the last shard has an early
    copy (else None: they are final when this function returns). EARLY: the data sections
    already being copied into OUT_DIR (:mod:`nvfp4tools.early_copy`); a shard the plan lays out
    the same way keeps its copy and gets only its header and the bytes that differ."""
    from nvfp4tools.formats._st_writer import nbytes_of, write_index

    exact = _exact_meta(p.src)
    shards = _shard(p.jobs, max_shard_bytes, p.src)
    files = []
    weight_map: dict[str, str] = {}
    prog = _Progress(sum(j.nbytes for j in p.jobs))
    total = 0
    for i, jobs in enumerate(shards):
        fname = "model.safetensors" if len(shards) == 1 else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        outs = [o for j in jobs for o in j.outs]
        seen: set[str] = set()
        for o in outs:
            if o.key in seen:
                raise FormatError(f"two source tensors map to output '{o.key}'")
            seen.add(o.key)
        header: dict[str, Any] = {}
        meta = {"format": "pt", "converted_by": "nvfp4tools"}
        mine = {k: v for k, v in p.exact_meta.items() if k in seen}
        if mine:
            meta[EXACT_META_KEY] = json.dumps(mine, sort_keys=True)
        header["__metadata__"] = meta
        off = 0
        offsets: dict[str, int] = {}
        for o in outs:
            n = nbytes_of(o.dtype, o.shape)
            header[o.key] = {"dtype": o.dtype, "shape": list(o.shape), "data_offsets": [off, off + n]}
            offsets[o.key] = off
            off += n
        blob = json.dumps(header, separators=(",", ":")).encode()
        leave(header)   # (~40,000 objects: freed by the command line's exit, not on its critical path)
        blob += b" " * ((-len(blob)) % 8)
        claimed = early.claim(fname, len(blob), off) if early is not None else None
        if claimed is not None:
            blob += b" " * (claimed.reserved - len(blob))  # trailing spaces: allowed by the format
        base = 8 + len(blob)
        path = os.path.join(out_dir, fname)
        with open(path, "r+b" if claimed is not None else "wb") as fh:
            fh.write(len(blob).to_bytes(8, "little"))
            fh.write(blob)
            fh.flush()  # from here on only positioned writes, on the writer thread
            if claimed is None:
                os.ftruncate(fh.fileno(), base + off)  # final size now: the header is readable during the copy
            fds: dict[str, int] = {}
            writer = runs = None
            if claimed is None:
                writer = _Writer(fh.fileno(), fds)
                runs = _CopyRuns(writer)
                add = runs.add
            else:
                # the early copy is under way: what differs from it (a rewritten global, mostly)
                # is written by the copy thread once the copy has passed those bytes; copies the
                # early copy makes anyway are dropped
                claimed.apply = lambda pos, data, fd=fh.fileno(): _write_at(fd, pos, data, fds)
                add = lambda pos, data, c=claimed: early.patch(c, pos, data)  # noqa: E731
            real: dict[str, str] = {}
            in_place = 0
            counted = [0]

            def tick(c=claimed) -> None:
                """Count the in-place bytes the early copy has made so far."""
                done = min(c.copied, in_place)
                prog.add(done - counted[0])
                counted[0] = done

            def wait_for_copy(end: int, c=claimed) -> None:
                """Until the early copy has made the bytes before END final (progress meanwhile)."""
                while not early.final_below(c, end):
                    with early.progress:
                        early.progress.wait(WAIT_TICK)
                    tick()
            try:
                for j in jobs:
                    for key, rel, data in _job_chunks(p.src, j, p.to, exact):
                        if claimed is None or not isinstance(data, CopyFrom):
                            prog.add(len(data))
                        if claimed is not None and isinstance(data, CopyFrom):
                            rp = real.get(data.path)
                            if rp is None:
                                rp = real[data.path] = os.path.realpath(data.path)
                            if EarlyCopy.in_place(claimed, rp, data.offset, data.nbytes, offsets[key] + rel):
                                in_place += data.nbytes  # counted in the progress as the early copy makes them
                                tick()
                                continue
                            prog.add(len(data))
                        add(base + offsets[key] + rel, data)
                if runs is not None:
                    runs.flush()
                if i == len(shards) - 1:  # everything is planned: the index, then work beside the copy
                    if len(shards) > 1:
                        write_index(out_dir, {**weight_map, **{k: fname for k in seen}}, total + off)
                    if while_copying is not None:
                        ready = None
                        if claimed is not None:
                            def ready(file: str, end: int, f=fname) -> None:
                                if file == f:
                                    wait_for_copy(end)
                        from nvfp4tools.formats import _safetensors
                        grows = os.path.realpath(path) if claimed is not None else None
                        if grows is not None:   # still being copied: re-read it at its final size
                            _safetensors.EXPECTED_SIZES[grows] = base + off
                        try:
                            while_copying(ready)
                        finally:
                            _safetensors.EXPECTED_SIZES.pop(grows, None)
                if writer is not None:
                    writer.close()
                else:
                    wait_for_copy(base + off)
                    prog.add(in_place - counted[0])
            except BaseException:
                if early is not None:
                    early.close()
                if writer is not None:
                    writer.close(abort=True)
                raise
            finally:
                for fd in fds.values():
                    os.close(fd)
            fh.truncate(base + off)   # (after an early copy: the size the in-copy re-read assumed)
        files.append(fname)
        total += off
        if i < len(shards) - 1:   # (the last shard's names go straight into the index above)
            for k in seen:
                weight_map[k] = fname
    prog.close()
    if early is not None:
        for name in set(early.shards) - set(files):  # copied for a shard the plan does not write
            early.discard(name)
    return files


# -- configs and side files ------------------------------------------------------------------------

def _quant_summary(src: Checkpoint, p: Plan | None = None) -> dict[str, Any]:
    if p is not None and any(j.action.startswith("quantize->") for j in p.jobs):
        whats = {o.what for j in p.jobs for o in j.outs}
        kinds = ({"nvfp4"} if "codes" in whats else set()) | ({"int4"} if "int4" in whats else set())
        return {"kinds": kinds, "w4a4": "input" in whats, "groups": [32] if "int4" in whats else [],
                "kv": any(o.what.startswith("kv:") for j in p.jobs for o in j.outs)}
    q = [t for t in src.tensors.values() if t.scheme.quantized]
    kinds = {t.scheme.name for t in q}
    w4a4 = any(t.scheme.activations == "nvfp4" for t in q)
    groups = sorted({t.shape[-1] // t.part("block_scale").stored_shape[-1] for t in q
                     if t.scheme.element == "int4" and t.part("block_scale") is not None} | ({32} if "q4_0" in kinds else set()))
    kv = any(p.role == "kv_scale" for t in q for p in t.parts)
    return {"kinds": kinds, "w4a4": w4a4, "groups": groups, "kv": kv}


def _exclude_list(src: Checkpoint, for_modelopt: bool, p: Plan | None = None) -> list[str]:
    if p is not None and any(j.action.startswith("quantize->") for j in p.jobs):
        from nvfp4tools.roles import LINEAR_ROLES
        quantized = {s for j in p.jobs if j.action.startswith("quantize->") or j.exact and
                     any(o.what in ("codes", "int4") for o in j.outs) for s in j.sources}
        return sorted({t.module for t in src.tensors.values() if len(t.shape) >= 2 and t.name not in quantized
                       and t.role in LINEAR_ROLES + ("router", "lm_head", "vision", "projector")})
    pats = [x for x in src.exclude_patterns]
    if src.format == "gguf" or (for_modelopt and any(x.startswith("re:") for x in pats)):
        # explicit names of the unquantized linears: valid for every matcher
        from nvfp4tools.roles import LINEAR_ROLES
        names = sorted({t.module for t in src.tensors.values()
                        if not t.scheme.quantized and len(t.shape) >= 2 and t.role in LINEAR_ROLES + ("router", "lm_head")})
        keep = [x for x in pats if not x.startswith("re:")] if for_modelopt else pats
        return sorted(set(keep) | set(names)) if src.format == "gguf" or for_modelopt else pats
    return pats


def write_configs(p: Plan, out_dir: str) -> None:
    from ._version import __version__

    src = p.src
    cfg = json.loads(json.dumps(src.config)) if src.config else {}
    if not cfg and src.format == "gguf":
        embedded = src.metadata.get("nvfp4tools.config_json")
        if isinstance(embedded, str):
            cfg = json.loads(embedded)
    qs = _quant_summary(src, p)
    if p.to == "modelopt":
        algo = "NVFP4" if qs["w4a4"] else "W4A16_NVFP4"
        excl = _exclude_list(src, True, p)
        hq = {"producer": {"name": "modelopt", "version": "0.47.0"},
              "quantization": {"quant_algo": algo, "kv_cache_quant_algo": "FP8" if qs["kv"] else None,
                               "group_size": 16, "exclude_modules": excl},
              "converted_by": f"nvfp4tools {__version__}"}
        with open(os.path.join(out_dir, "hf_quant_config.json"), "w") as fh:
            json.dump(hq, fh, indent=4)
        grp = {"dynamic": False, "num_bits": 4, "type": "float", "group_size": 16}
        qc: dict[str, Any] = {"config_groups": {"group_0": {"weights": grp, "targets": ["Linear"]}},
                              "ignore": excl, "quant_algo": algo, "producer": hq["producer"], "quant_method": "modelopt"}
        if qs["w4a4"]:
            qc["config_groups"]["group_0"]["input_activations"] = grp
        if qs["kv"]:
            qc["kv_cache_scheme"] = {"dynamic": False, "num_bits": 8, "type": "float"}
        cfg["quantization_config"] = qc
    else:
        if "nvfp4" in qs["kinds"]:
            w = {"num_bits": 4, "type": "float", "symmetric": True, "group_size": 16, "strategy": "tensor_group",
                 "dynamic": False, "scale_dtype": "torch.float8_e4m3fn"}
            grp: dict[str, Any] = {"targets": ["Linear"], "weights": w, "format": "nvfp4-pack-quantized",
                                   "output_activations": None,
                                   "input_activations": dict(w, dynamic="local", observer="static_minmax") if qs["w4a4"] else None}
            fmt = "nvfp4-pack-quantized"
        else:
            g = qs["groups"][0] if qs["groups"] else 32
            w = {"num_bits": 4, "type": "int", "symmetric": True, "group_size": g, "strategy": "group",
                 "dynamic": False}
            grp = {"targets": ["Linear"], "weights": w, "format": "pack-quantized", "input_activations": None,
                   "output_activations": None}
            fmt = "pack-quantized"
        qc = {"config_groups": {"config_group_0": grp}, "format": fmt, "ignore": _exclude_list(src, False, p),
              "kv_cache_scheme": {"num_bits": 8, "type": "float", "strategy": "tensor", "dynamic": False,
                                  "symmetric": True} if qs["kv"] else None,
              "quant_method": "compressed-tensors", "quantization_status": "compressed", "version": "0.20.0",
              "global_compression_ratio": None}
        cfg["quantization_config"] = qc
    if cfg:
        with open(os.path.join(out_dir, "config.json"), "w") as fh:
            json.dump(cfg, fh, indent=2)


def copy_side_files(src_root: str, out_dir: str, skip: tuple[str, ...] = ()) -> list[str]:
    copied = []
    for n in sorted(os.listdir(src_root)):
        if n in skip or n.endswith((".safetensors", ".gguf", ".index.json", ".bin", ".pt", ".pth")):
            continue
        if n in ("config.json", "hf_quant_config.json"):
            continue
        full = os.path.join(src_root, n)
        if os.path.isfile(full) and (n in SIDE_FILES or n.endswith((".jinja", ".txt", ".md", ".model"))
                                     or n.startswith(("tokenizer", "special_tokens", "generation", "preprocessor",
                                                      "processor", "chat_template"))):
            shutil.copy2(full, os.path.join(out_dir, n))
            copied.append(n)
    return copied


# -- verification ----------------------------------------------------------------------------------

def verify_output(p: Plan, out_path: str, mode: str = "sampled", out: Checkpoint | None = None,
                  ready: Callable[[str, int], None] | None = None) -> int:
    """Re-read the written checkpoint and check every exact tensor against the source bit for bit:
    codes, block-scale bytes and global multipliers for NVFP4 (per expert for stacked tensors;
    a folded Gemma 4 down scale against weight_scale_2 x per_expert_scale), values and scales for
    int4/Q4_0, bytes for everything else.

    ``mode="sampled"`` applies to parts copied byte for byte (``copy_file_range`` of the same
    range): every such part is located through the re-read output header and its dtype, shape and
    length checked, then its first and last 4 KiB and one 4 KiB window per 64 MiB are compared.
    The errors a range copy can make (a wrong offset, a wrong length, two tensors swapped) move
    whole ranges, so they show at the edges; re-reading every copied byte costs about one more
    ``cp`` and finds nothing more. Everything that was transformed (scales, repacked codes,
    stacked or split experts, GGUF) is always compared in full. ``mode="full"`` compares every
    byte. READY(file, end), where given, is called before any output bytes of a tensor are read
    and returns once they are final (verification beside a copy still under way)."""
    from nvfp4tools import formats

    if out is None:  # (convert() re-reads the header while the last copy runs and passes it in)
        out = formats.read(out_path, p.to)
    _forget(out.root)
    src_exact, out_exact = _exact_meta(p.src), _exact_meta(out)
    checked = 0
    cache: dict[str, Canon] = {}
    windows = _Windows()
    for j in p.jobs:
        if not j.exact or j.action == "generate" or not j.sources:
            continue
        key = j.outs[0].key
        if p.to == "gguf":
            name = key
        elif j.action in ("stack", "split") or p.src.format == "gguf":
            name = key[: -len(".weight_packed")] + ".weight" if key.endswith(".weight_packed") else key
        else:
            name = j.sources[0]
        t_out = out.tensors.get(name)
        if t_out is None:
            raise FormatError(f"verification: '{name}' is missing from the output")
        if ready is not None:   # once per file the tensor's parts are in (nearly always one)
            ends: dict[str, int] = {}
            for q in t_out.parts:
                ends[q.file] = max(ends.get(q.file, 0), q.offset + q.nbytes)
            for file, end in ends.items():
                ready(file, end)
        direct = _direct_parts(p.src.tensors[j.sources[0]], j) if len(j.sources) == 1 else None
        if direct is not None and p.to != "gguf" and p.src.format != "gguf":
            _verify_bytes(p.src, out, direct, t_out, windows, sampled=mode == "sampled")
            small = [o for o in j.outs if o not in direct]
            if small:
                # the converted scalars: the multipliers the output means, bit for bit, and the
                # bytes it stores (the multiplier check alone would pass a divisor 1 ulp off
                # whose float32 reciprocal rounds to the same multiplier)
                t_src = p.src.tensors[j.sources[0]]
                fb = scalar_mults(out, t_out, out_exact)
                for role, bits in scalar_mults(p.src, t_src, src_exact).items():
                    if fb.get(role) != bits:
                        what = "global" if role == "global_scale" else "input"
                        raise FormatError(f"verification: {what} scale of '{name}' differs (a bug: please report)")
                keys = {q.key: q for q in t_out.parts}
                for key, want in scalar_chunks(p.src, t_src, small, p.to, src_exact):
                    q = keys.get(key)
                    got = None if q is None else part_bytes(out, q)
                    if got != want:
                        raise FormatError(f"verification: '{key}' holds {got.hex() if got else 'nothing'}, expected "
                                          f"{want.hex()} (a bug: please report)")
            checked += 1
            continue
        b = canon_of(out, t_out, out_exact)
        if j.action == "split":
            src_name = j.sources[0]
            if src_name not in cache:
                cache.clear()
                cache[src_name] = canon_of(p.src, p.src.tensors[src_name], src_exact)
            e = int(j.note.split()[1])
            lo, hi = (int(x) for x in j.note.split()[-1].split(":"))
            a = _slice_canon(cache[src_name], (e, slice(lo, hi)), e)
            if j.global_override is not None:
                a.global_mult = np.float32(j.global_override)
            if not _same(a, b):
                raise FormatError(f"verification: expert {e} of '{src_name}' differs in the output (a bug: please report)")
            checked += 1
            continue
        members = [canon_of(p.src, p.src.tensors[n], src_exact) for n in j.sources]
        for e, a in enumerate(members):
            bb = b
            if len(members) > 1:
                if j.fuse == "gate_up":  # two members per expert, stacked along rows
                    ex, half = divmod(e, 2)
                    rows = a.shape[0]
                    sl = (ex, slice(half * rows, (half + 1) * rows))
                else:
                    ex, sl = e, (e,)
                bb = _slice_canon(b, sl, ex)
            ok = _same(a, bb, fold=p.src.tensors.get(j.note) if j.action.endswith("+fold") else None, p=p, e=e)
            if not ok:
                raise FormatError(f"verification: '{j.sources[e]}' differs between source and output "
                                  "(a bug: please report)")
        checked += len(members)
    windows.flush()
    return checked


_FDS: dict[tuple[str, str], int] = {}


def _fd(root: str, file: str) -> int:
    fd = _FDS.get((root, file))
    if fd is None:
        fd = _FDS[(root, file)] = os.open(os.path.join(root, file), os.O_RDONLY)
    return fd


_WINDOW = 4 * 2**10           # sampled verification: window size (a page: any shifted range shows in it)
_WINDOW_EVERY = 64 * 2**20    # and one window per this many bytes


def _windows(nbytes: int) -> list[tuple[int, int]]:
    """(offset, length) windows of a sampled compare: both edges plus one per _WINDOW_EVERY."""
    if nbytes <= 2 * _WINDOW:
        return [(0, nbytes)]
    wins = [(0, _WINDOW), (nbytes - _WINDOW, _WINDOW)]
    for off in range(_WINDOW_EVERY, nbytes - _WINDOW, _WINDOW_EVERY):
        wins.append((off, _WINDOW))
    return wins


def _verify_bytes(src: Checkpoint, out: Checkpoint, direct: dict, t_out: TensorInfo, windows: _Windows,
                  sampled: bool = False) -> None:
    """Check copied parts' dtypes, shapes and lengths, and queue their bytes for comparison
    (windows when SAMPLED, else every byte in bounded chunks: memory stays flat)."""
    keys = {p.key: p for p in t_out.parts}
    for o, part in direct.items():
        q = keys.get(o.key)
        if q is None:
            raise FormatError(f"verification: '{o.key}' is missing from the output")
        if (q.nbytes, q.stored_dtype, q.stored_shape) != (part.nbytes, part.stored_dtype, part.stored_shape):
            raise FormatError(f"verification: '{o.key}' is {q.stored_dtype} {list(q.stored_shape)} ({q.nbytes} bytes) "
                              f"in the output, {part.stored_dtype} {list(part.stored_shape)} ({part.nbytes} bytes) "
                              "in the source (a bug: please report)")
        fa = _fd(src.root, part.file)
        fb = _fd(out.root, q.file)
        spans = _windows(part.nbytes) if sampled else \
            [(off, min(_CHUNK, part.nbytes - off)) for off in range(0, part.nbytes, _CHUNK)]
        for off, n in spans:
            windows.add(fa, part.offset + off, fb, q.offset + off, n, o.key)


class _Windows:
    """Byte ranges to compare between source and output, read together where they lie close.

    One tensor's last window and the next tensor's first are usually a few bytes apart, in both
    files by the same distance (the same order, a converted 4-byte global or nothing in between):
    one pread per side then covers both, and only the windows' own bytes count. The same bytes
    are compared as window by window, with about half the system calls (28,000 preads on the
    2.9 GiB bench checkpoint before). Windows are queued in batches, each compared once its
    tensors' bytes are final (verify_output calls READY first)."""

    GAP = 512          # bytes read between two windows and not compared, at most
    SPAN = 64 * 2**10  # bytes read at once, at most (a span that differs somewhere, say in a
                       # converted global between two windows, is compared window by window,
                       # and slicing copies: --verify full's 16 MiB chunks are read alone)
    BATCH = 1024       # windows queued before they are compared

    def __init__(self) -> None:
        self.items: list[tuple[int, int, int, int, int, str]] = []

    def add(self, fa: int, a_off: int, fb: int, b_off: int, n: int, key: str) -> None:
        self.items.append((fb, b_off, fa, a_off, n, key))
        if len(self.items) >= self.BATCH:
            self.flush()

    def flush(self) -> None:
        items = sorted(self.items)
        self.items = []
        i = 0
        while i < len(items):
            fb, b0, fa, a0, n, _ = items[i]
            end = b0 + n
            j = i + 1
            while j < len(items):
                fb2, b2, fa2, a2, n2, _ = items[j]
                if fb2 != fb or fa2 != fa or b2 - b0 != a2 - a0 or b2 - end > self.GAP or b2 + n2 - b0 > self.SPAN:
                    break
                end = max(end, b2 + n2)
                j += 1
            a = os.pread(fa, end - b0, a0)
            b = os.pread(fb, end - b0, b0)
            if a != b:   # something differs: in a window, or only in the bytes between
                for _, bk, _, _, nk, key in items[i:j]:
                    r = bk - b0
                    if a[r:r + nk] != b[r:r + nk]:
                        raise FormatError(f"verification: bytes of '{key}' differ from the source (a bug: please report)")
            i = j


def _slice_canon(c: Canon, sl, expert: int) -> Canon:
    g = np.asarray(c.global_mult).reshape(-1) if c.global_mult is not None else None
    return Canon(c.name, c.kind, (), codes=None if c.codes is None else c.codes[sl],
                 scale_bytes=None if c.scale_bytes is None else c.scale_bytes[sl],
                 global_mult=None if g is None else g[expert if g.size > 1 else 0],
                 q=None if c.q is None else c.q[sl], group_scales=None if c.group_scales is None else c.group_scales[sl],
                 array=None if c.array is None else c.array[sl], dtype=c.dtype, group=c.group)


def _bits(x) -> np.ndarray:
    return np.asarray(x, np.float32).reshape(-1).view(np.uint32)


def _same(a: Canon, b: Canon, fold=None, p: Plan | None = None, e: int = 0) -> bool:
    if a.kind == "nvfp4":
        if b.kind != "nvfp4" or not (np.array_equal(a.codes, b.codes) and np.array_equal(a.scale_bytes, b.scale_bytes)):
            return False
        want = np.asarray(a.global_mult, np.float32).reshape(-1)
        if fold is not None:
            from nvfp4tools.tensors import load_part
            pes = np.asarray(load_part(p.src.root, fold.part("data")), np.float32).reshape(-1)
            want = (want * pes[e]).astype(np.float32)
        return np.array_equal(_bits(want), _bits(b.global_mult))
    if a.kind == "int4":
        if b.kind != "int4" or not np.array_equal(a.q, b.q):
            return False
        sa = _scale_f32(a)
        sb = _scale_f32(b)
        rep = sb.shape[-1] // sa.shape[-1] if sa.shape[-1] else 1
        return np.array_equal(np.repeat(sa, rep, axis=-1) if rep > 1 else sa, sb) or \
            np.array_equal(sa, sb[..., ::max(1, sa.shape[-1] and sb.shape[-1] // sa.shape[-1])])
    fa = _raw_f64(a)
    fb = _raw_f64(b)
    return fa.shape == fb.shape and np.array_equal(fa, fb)


def _scale_f32(c: Canon) -> np.ndarray:
    from nvfp4tools.kernels_ref.bf16 import bf16_bits_to_f32

    d = np.asarray(c.group_scales)
    if c.dtype == "BF16":
        return bf16_bits_to_f32(d)
    if c.dtype == "F16":
        return d.view(np.float16).astype(np.float32)
    return d.astype(np.float32)


def _raw_f64(c: Canon) -> np.ndarray:
    from nvfp4tools.kernels_ref.bf16 import bf16_bits_to_f32

    a = np.asarray(c.array)
    if c.dtype == "BF16" and a.dtype == np.uint16:
        a = bf16_bits_to_f32(a)
    elif c.dtype == "F16" and a.dtype == np.uint16:
        a = a.view(np.float16)
    return np.asarray(a, np.float64).reshape(-1)


def _close_caches() -> None:
    for cache in (_SIZES, _VALUES, _MULTS, _SCALARS):
        if cache and keeping():
            leave(cache.copy())   # (thousands of values: the command line's exit drops them)
        cache.clear()
    for fd in _FDS.values():
        os.close(fd)
    _FDS.clear()
    for r in _READERS.values():
        r.close()
    _READERS.clear()


# -- the command -----------------------------------------------------------------------------------

def convert(src_path: str, dst: str, to: str, *, experts: str | None = None, allow_lossy: bool = False,
            dry_run: bool = False, force: bool = False, max_shard_bytes: int | None = None,
            quantize: str | None = None, verify: str = "sampled", early: EarlyCopy | None = None) -> dict[str, Any]:
    """Convert SRC_PATH into DST (see the module doc). EARLY: a copy started by
    :func:`begin_early_copy` with the same arguments (the CLI starts it before importing this
    module); without one, convert() starts it itself. It is stopped and its folder removed
    whatever happens."""
    if early is None:
        early = begin_early_copy(src_path, dst, to, experts=experts, force=force, quantize=quantize,
                                 max_shard_bytes=max_shard_bytes, dry_run=dry_run)
    try:
        return _convert(src_path, dst, to, experts=experts, allow_lossy=allow_lossy, dry_run=dry_run, force=force,
                        max_shard_bytes=max_shard_bytes, quantize=quantize, verify=verify, early=early)
    finally:
        _close_caches()
        if early is not None:
            early.close()
            shutil.rmtree(early.tmp, ignore_errors=True)  # gone already when the output was renamed


def _convert(src_path: str, dst: str, to: str, *, experts: str | None, allow_lossy: bool, dry_run: bool,
             force: bool, max_shard_bytes: int | None, quantize: str | None, verify: str,
             early: EarlyCopy | None) -> dict[str, Any]:
    from nvfp4tools import formats

    check_destination(src_path, dst, force, existing=False)  # a dry run may name an existing DST
    dst_real = os.path.realpath(dst)
    src = formats.read(src_path)
    p = plan(src, to, experts=experts, allow_lossy=allow_lossy, quantize=quantize)
    report = p.as_dict()
    LOSSY_REPORT.clear()
    _AMAX.clear()
    if dry_run:
        return report
    check_destination(src_path, dst, force)
    tmp = temp_dir_for(dst)
    if early is None:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    pre_read = None
    side: dict[str, Any] = {}
    try:
        if to == "gguf":
            from nvfp4tools.formats.gguf_writer import write_gguf_plan
            files = write_gguf_plan(p, tmp, os.path.basename(dst_real))
            if LOSSY_REPORT:
                report["lossy"] = [dict(x, sqnr_db=None if x["sqnr_db"] is None else float(x["sqnr_db"]))
                                   for x in LOSSY_REPORT]
        else:
            def while_copying(ready) -> None:
                # configs, side files and the output's header re-read overlap the kernel copy;
                # not when a reader would need tensor bytes (int4 stored shapes). Behind an
                # early copy the verification too, each tensor once its bytes are final.
                write_configs(p, tmp)
                side["copied"] = copy_side_files(src.root, tmp)
                if verify and not any(o.what == "shape" for j in p.jobs for o in j.outs):
                    try:
                        side["out"] = formats.read(tmp, to)
                    except Nvfp4ToolsError:
                        return  # read again after the copy, where the error is reported properly
                    if ready is not None:
                        side["verified"] = verify_output(p, tmp, verify, out=side["out"], ready=ready)

            files = write_safetensors_plan(p, tmp, max_shard_bytes, while_copying, early)
            if "copied" not in side:
                write_configs(p, tmp)
                side["copied"] = copy_side_files(src.root, tmp)
            report["copied"] = side["copied"]
            pre_read = side.get("out")
            if LOSSY_REPORT:
                report["lossy"] = list(LOSSY_REPORT)
                with open(os.path.join(tmp, "nvfp4tools_conversion_report.json"), "w") as fh:
                    json.dump({"schema": "nvfp4tools/conversion-report/v1", "source": src.source, "to": to,
                               "tensors": LOSSY_REPORT}, fh, indent=1)
        report["verified_tensors"] = side["verified"] if "verified" in side else \
            verify_output(p, tmp if to != "gguf" else os.path.join(tmp, files[0]), verify,
                          out=pre_read if to != "gguf" else None)
        report["verification"] = verify
        report["files"] = files
        if to == "gguf":
            # DST names the .gguf file: move the verified file, drop the temp folder
            final = dst_real if dst_real.endswith(".gguf") else dst_real + ".gguf"
            if os.path.exists(final) and force:
                os.remove(final)
            os.rename(os.path.join(tmp, files[0]), final)
            shutil.rmtree(tmp, ignore_errors=True)
            report["destination"] = final
            report["files"] = [os.path.basename(final)]
            return report
        if os.path.exists(dst_real):
            old = tmp + ".old"
            os.rename(dst_real, old)
            os.rename(tmp, dst_real)
            shutil.rmtree(old, ignore_errors=True) if os.path.isdir(old) else os.remove(old)
        else:
            os.rename(tmp, dst_real)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        leave(src, p, side)   # ~100,000 objects: the command line's exit drops them at once
        _close_caches()
    report["destination"] = dst
    return report
