"""What the user asked a conversion for, validated once, handed to the target's writer."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Options:
    to: str
    experts: str | None = None          # "per-expert" | "fused" | None (as in the source)
    allow_lossy: bool = False
    quantize: str | None = None         # "nvfp4" | "int4" | "q4_0" (with allow_lossy)
    max_shard_bytes: int | None = None
    verify: str = "sampled"             # "sampled" | "full"
