"""Measured-best MMA GEMM configs per GPU: data in ``mma_tuned.json`` beside this module, written by
``bench/tune_mma.py --write-table`` on that GPU, each entry with its time, cuBLAS bf16's in the same
run and where it was measured. ``nvfp4_gemm._config`` takes the entry for this GPU's name, M bucket
and N x K where there is one, and its rules everywhere else (other GPUs, other shapes). Engines do
the same with their Triton kernels (vLLM's fused-MoE configs, one JSON per GPU and shape), for the
same reason: on small layers the best tile, K split and pipeline depth differ from shape to shape by
more than a rule captures. Stdlib only, so that the table is checked without a GPU."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache

TABLE_PATH = os.path.join(os.path.dirname(__file__), "mma_tuned.json")

# (BLOCK_M, BLOCK_N, BLOCK_K, SPLIT_K, num_warps, num_stages, DECODE, SWAP, TMA, REDUCE):
# nvfp4_gemm.Config with every entry spelled out
CONFIG_FIELDS = ("block_m", "block_n", "block_k", "split_k", "warps", "stages", "decode", "swap", "tma", "reduce")


@dataclass(frozen=True)
class TunedEntry:
    config: tuple[int, ...]
    us: float            # the config's time under bench's graph timing
    bf16_us: float       # cuBLAS bf16 on the same layer in the same run
    measured: str        # date and commit of the run

    def as_json(self) -> dict:
        return {"config": list(self.config), "us": round(self.us, 2), "bf16_us": round(self.bf16_us, 2),
                "measured": self.measured}


def m_bucket(m: int) -> int:
    """The M an entry stands for: the power of two at or above m (an entry measured at M = 128
    serves M = 65-128, which fill the same single 128-row tile)."""
    return 1 << (max(m, 1) - 1).bit_length()


def spell_out(config: tuple[int, ...]) -> tuple[int, ...]:
    """A config with the entries it may leave out (TMA, REDUCE: 0) written in."""
    return tuple(config) + (0,) * (len(CONFIG_FIELDS) - len(config))


def check_config(config: tuple[int, ...]) -> None:
    """Raise ValueError unless CONFIG is a whole config the MMA kernel accepts."""
    if len(config) != len(CONFIG_FIELDS) or not all(isinstance(v, int) for v in config):
        raise ValueError(f"a tuned config has {len(CONFIG_FIELDS)} integers {CONFIG_FIELDS}, got {config}")
    bm, bn, bk, split, warps, stages, decode, swap, tma, reduce = config
    if any(v <= 0 or v & (v - 1) for v in (bm, bn, bk, warps)) or bk < 64 or split < 1 or stages < 1:
        raise ValueError(f"tuned config {config}: tiles and warps are powers of two, K blocks >= 64, split >= 1")
    if decode != 2 or swap not in (0, 1) or tma not in (0, 1) or reduce not in (0, 1) or (swap and tma):
        raise ValueError(f"tuned config {config}: DECODE 2, SWAP/TMA/REDUCE 0 or 1, never SWAP with TMA")
    if reduce and bm < 16:
        raise ValueError(f"tuned config {config}: REDUCE 1 sums 16 row bands, BLOCK_M >= 16")


def entries(table: dict):
    """(gpu name, M, N, K, TunedEntry) for every entry of a loaded table."""
    for gpu, by_m in table.get("gpus", {}).items():
        for m, by_shape in by_m.items():
            for shape, e in by_shape.items():
                n, k = (int(v) for v in shape.split("x"))
                yield gpu, int(m), n, k, TunedEntry(tuple(e["config"]), e["us"], e["bf16_us"], e["measured"])


def load_table(path: str = TABLE_PATH) -> dict:
    with open(path) as fh:
        table = json.load(fh)
    for *_, e in entries(table):
        check_config(e.config)
    return table


@lru_cache(maxsize=1)
def _shipped() -> dict:
    return load_table()


def lookup(gpu_name: str, m: int, n: int, k: int, table: dict | None = None) -> tuple[int, ...] | None:
    """The measured-best config for this GPU (its CUDA device name), M bucket and N x K, or None."""
    t = _shipped() if table is None else table
    e = t.get("gpus", {}).get(gpu_name, {}).get(str(m_bucket(m)), {}).get(f"{n}x{k}")
    return tuple(e["config"]) if e else None


def record(table: dict, gpu_name: str, m: int, n: int, k: int, entry: TunedEntry) -> None:
    """Put ENTRY in TABLE (in memory) for this GPU, M's bucket and N x K, replacing an older one."""
    check_config(entry.config)
    table.setdefault("gpus", {}).setdefault(gpu_name, {}).setdefault(str(m_bucket(m)), {})[f"{n}x{k}"] = \
        entry.as_json()


def save_table(table: dict, path: str = TABLE_PATH) -> None:
    """Write TABLE whole or not at all (a sweep cut off mid-write leaves the old file)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        json.dump(table, fh, indent=1, sort_keys=True)
        fh.write("\n")
    os.replace(tmp, path)
