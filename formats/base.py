"""What a format plugs into the registry: a sniffer, a header-only reader and, where nvfp4tools
can write it, a writer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from nvfp4tools.model import Checkpoint


@dataclass(frozen=True)
class FormatSpec:
    """One registered checkpoint format.

    ``sniff(path)`` answers from the checkpoint's own declaration (config.json's
    ``quant_method``, hf_quant_config.json, the GGUF magic) and must be cheap.
    ``read(path)`` returns a :class:`Checkpoint` from headers only.
    ``writer()`` returns the format's writer (``nvfp4tools.convert`` plans and streams through it:
    ``suffix``, ``plan(src, options, view)``, ``write(plan, view, tmp, options, lossy, progress)``);
    None where nvfp4tools does not write the format. A factory, so that reading never imports
    the writing side.
    """

    name: str
    sniff: Callable[[str], bool]
    read: Callable[[str], Checkpoint]
    description: str
    writer: Callable[[], Any] | None = None
