"""What a format plugs into the registry: a sniffer and a header-only reader."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from nvfp4tools.model import Checkpoint


@dataclass(frozen=True)
class FormatSpec:
    """One registered checkpoint format.

    ``sniff(path)`` answers from the checkpoint's own declaration (config.json's
    ``quant_method``, hf_quant_config.json, the GGUF magic) and must be cheap.
    ``read(path)`` returns a :class:`Checkpoint` from headers only.
    """

    name: str
    sniff: Callable[[str], bool]
    read: Callable[[str], Checkpoint]
    description: str
