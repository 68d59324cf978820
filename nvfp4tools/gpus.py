"""The GPU table (data in ``nvfp4tools/data/gpus.json``, each figure with its source) and local
GPU discovery. Stdlib only."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache

from .errors import BackendUnavailable, UsageError


@dataclass(frozen=True)
class GPU:
    key: str
    name: str
    memory_total_bytes: int        # what the driver reports (torch total_memory / cudaMemGetInfo total)
    bandwidth_bytes_per_s: int
    compute_capability: str
    fp4: str                       # "native" (FP4 tensor cores) or "marlin" (W4A16 fallback)
    fp8_tensor_cores: bool
    memory_nominal: str = ""
    memory_source: str = ""
    bandwidth_source: str = ""
    unified_memory: bool = False
    sms: int = 0                   # streaming multiprocessors (cudaDeviceProp.multiProcessorCount)
    threads_per_sm: int = 0        # max resident threads per SM (set by the compute capability)

    @property
    def unverified(self) -> tuple[str, ...]:
        """The figures whose source the table marks UNVERIFIED ("memory", "bandwidth")."""
        return tuple(what for what, src in (("memory", self.memory_source), ("bandwidth", self.bandwidth_source))
                     if "UNVERIFIED" in src.upper())


@lru_cache(maxsize=1)
def _table() -> dict:
    path = os.path.join(os.path.dirname(__file__), "data", "gpus.json")
    with open(path) as fh:
        return json.load(fh)


def context_overhead_bytes(gpu: GPU) -> int:
    """What the CUDA context holds before any engine allocation: a fixed part (driver, runtime;
    measured) plus the stack the driver backs for every thread that can be resident at once, SMs x
    threads per SM x the per-thread stack (CU_LIMIT_STACK_SIZE, 1 KiB by default), which is why a
    GPU with fewer SMs keeps more of its memory (bench/cuda_context.py measures both parts)."""
    t = _table()
    return int(t["context_fixed_bytes"]) + stack_reservation_bytes(gpu)


def context_words(gpu: GPU) -> str:
    """The context term in words, for --explain: its two parts and where each comes from."""
    t = _table()
    return (f"{context_overhead_bytes(gpu)} B: {int(t['context_fixed_bytes'])} B fixed (measured) + "
            f"{gpu.sms} SMs x {gpu.threads_per_sm} threads x {int(t['stack_bytes_per_thread'])} B of stack")


def stack_reservation_bytes(gpu: GPU) -> int:
    """The context's local-memory (stack) reservation: SMs x resident threads per SM x stack bytes."""
    return gpu.sms * gpu.threads_per_sm * int(_table()["stack_bytes_per_thread"])


def all_gpus() -> list[GPU]:
    out = []
    for g in _table()["gpus"]:
        out.append(GPU(g["key"], g["name"], g["memory_total_bytes"], g["bandwidth_bytes_per_s"],
                       g["compute_capability"], g["fp4"], g["fp8_tensor_cores"], g["memory_nominal"],
                       g["memory_source"], g["bandwidth_source"], g.get("unified_memory", False),
                       g["sms"], g["threads_per_sm"]))
    return out


def table_rows() -> list[dict]:
    return list(_table()["gpus"])


def get_gpus(spec: str) -> list[GPU]:
    """``all`` (the whole table, in its order) or a comma-separated list of keys (``a,b,c``), each
    resolved by :func:`get_gpu`; a key given twice counts once."""
    if spec.strip().lower() == "all":
        return all_gpus()
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if not names:
        raise UsageError(f"--gpu {spec!r} names no GPU", hint=f"known: {', '.join(g.key for g in all_gpus())}, or 'all'")
    out: list[GPU] = []
    for n in names:
        g = get_gpu(n)
        if g.key not in {x.key for x in out}:
            out.append(g)
    return out


def get_gpu(name: str) -> GPU:
    key = name.lower().replace("_", "-").replace(" ", "-")
    aliases = {"rtx-pro-6000-blackwell": "rtx-pro-6000", "h100": "h100-sxm", "a100": "a100-80gb",
               "gb10": "dgx-spark", "spark": "dgx-spark"}
    key = aliases.get(key, key)
    for g in all_gpus():
        if g.key == key:
            return g
    raise UsageError(f"unknown GPU {name!r}",
                     hint=f"known: {', '.join(g.key for g in all_gpus())}, or 'auto', or pass --vram")


# Size units: decimal (GB = 1e9, as drive and model-card makers write) and binary (GiB = 2^30,
# as drivers and torch report memory).
SIZE_UNITS = {"B": 1, "KB": 10**3, "KIB": 2**10, "KI": 2**10, "MB": 10**6, "MIB": 2**20, "MI": 2**20,
              "GB": 10**9, "GIB": 2**30, "GI": 2**30, "TB": 10**12, "TIB": 2**40, "TI": 2**40}
# One-letter units: decimal, as `--max-shard-size 5G` has always read; refused where a unit is required
# (24G could be meant as GB or as GiB, 7% apart).
_SHORT_UNITS = {"K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def parse_size(text: str, *, option: str = "", require_unit: bool = False) -> int:
    """'24GiB', '24 GB', '25769803776' -> bytes (GB = 1e9, GiB = 2^30).

    With REQUIRE_UNIT a bare number or a one-letter unit is refused: ``--vram 24`` would
    otherwise be 24 bytes, and ``24G`` is ambiguous between GB and GiB."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]i?B?|B)?\s*", text, re.I)
    if not m:
        raise UsageError(f"{option} {text!r} is not a size".lstrip(), hint="examples: 24GiB, 80GB, 512MiB")
    val = float(m.group(1))
    unit = (m.group(2) or "").upper()
    if require_unit and unit not in SIZE_UNITS:
        guess = f"{m.group(1)}B" if val >= 2**20 else f"{m.group(1)}GiB"   # a byte count, or a GPU's GiB
        what = f"an ambiguous unit {m.group(2)!r}" if unit else "no unit"
        raise UsageError(f"{option} {text!r} has {what} (expected GB, GiB, MB, MiB, TB, TiB or B)".lstrip(),
                         hint=f"did you mean {guess}?")
    return int(val * (SIZE_UNITS.get(unit) or _SHORT_UNITS.get(unit) or 1))


def custom_gpu(vram_bytes: int, like: GPU | None = None) -> GPU:
    base = like or get_gpu("rtx4090")
    return GPU("custom", f"custom ({vram_bytes / 2**30:.2f} GiB)", vram_bytes, base.bandwidth_bytes_per_s,
               base.compute_capability, base.fp4, base.fp8_tensor_cores,
               memory_source="--vram", bandwidth_source=f"assumed {base.key}'s",
               sms=base.sms, threads_per_sm=base.threads_per_sm)


def detect_local() -> GPU:
    """The local GPU via nvidia-smi (no torch import); nearest table entry for bandwidth/features."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        raise BackendUnavailable("--gpu auto: no nvidia-smi on PATH, so no local NVIDIA GPU can be read",
                                 hint="name the GPU with --gpu, or give its memory with --vram")
    try:
        out = subprocess.run([smi, "--query-gpu=name,memory.total,compute_cap", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20).stdout.strip().splitlines()
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BackendUnavailable(f"--gpu auto: nvidia-smi failed ({e})") from None
    if not out:
        raise BackendUnavailable("--gpu auto: nvidia-smi lists no GPU")
    name, mem_mib, cc = [x.strip() for x in out[0].split(",")]
    total = int(float(mem_mib)) * 2**20
    low = name.lower()
    best = None
    for g in all_gpus():
        words = [w for w in re.split(r"[-\s]", g.key) if w]
        if all(w in low.replace(" ", "") or w in low for w in words):
            best = g
    like = best or get_gpu("h100-sxm")
    return GPU(like.key if best else "local", name, total, like.bandwidth_bytes_per_s, cc,
               "native" if cc.split(".")[0] in ("10", "12") else "marlin", like.fp8_tensor_cores,
               memory_source="nvidia-smi memory.total", bandwidth_source=f"table entry {like.key}",
               sms=like.sms, threads_per_sm=like.threads_per_sm)
