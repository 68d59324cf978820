"""Format registry: each checkpoint format registers a sniffer and a reader.

Detection walks :data:`PRIORITY` (most specific first, stated explicitly so import order never
matters): a compressed-tensors checkpoint often also carries a stale ModelOpt
``hf_quant_config.json``, so compressed-tensors is asked first, and plain safetensors last.
"""

from __future__ import annotations

import importlib
import os

from nvfp4tools.errors import UnknownFormatError, UsageError
from nvfp4tools.model import Checkpoint

from .base import FormatSpec

_REGISTRY: dict[str, FormatSpec] = {}
PRIORITY = ("compressed-tensors", "modelopt", "mxfp4", "gguf", "safetensors")


def _key(name: str) -> str:
    return name.lower().replace("_", "-").replace(" ", "-")


def register(spec: FormatSpec) -> FormatSpec:
    key = _key(spec.name)
    if key in _REGISTRY:
        raise RuntimeError(f"format {key!r} registered twice")
    if key not in PRIORITY:
        raise RuntimeError(f"format {key!r} has no place in formats.PRIORITY")
    _REGISTRY[key] = spec
    return spec


# Built-in formats register on import; detection imports them one at a time in PRIORITY order,
# so reading a safetensors checkpoint never pays for the GGUF modules and vice versa.
_BUILTIN = {"compressed-tensors": "compressed_tensors", "modelopt": "modelopt", "mxfp4": "openai_mxfp4",
            "gguf": "gguf_format", "safetensors": "safetensors_plain"}


def _load(key: str) -> FormatSpec | None:
    if key not in _REGISTRY and key in _BUILTIN:
        importlib.import_module(f"{__name__}.{_BUILTIN[key]}")
    return _REGISTRY.get(key)


def _load_builtin() -> None:
    for key in PRIORITY:
        _load(key)


def names() -> list[str]:
    _load_builtin()
    return [n for n in PRIORITY if n in _REGISTRY]


def get(name: str) -> FormatSpec:
    key = _key(name)
    if _load(key) is None:
        # a name the user typed (--input-format, --to): a usage error, not an unreadable input
        raise UsageError(f"unknown format {name!r}", hint=f"known formats: {', '.join(names())}")
    return _REGISTRY[key]


def _check_exists(path: str) -> None:
    """A path that exists nowhere and is not a Hub id (``org/name[@rev]`` not written like a path)."""
    from .hub import is_hub_id, local_folder_hint
    if not os.path.exists(path) and not is_hub_id(path):
        raise UnknownFormatError(f"{path}: no such file or directory", hint=local_folder_hint(path))


def detect(path: str) -> FormatSpec:
    """The first registered format, in PRIORITY order, whose sniffer accepts PATH.

    For a Hub id this asks the Hub (headers only); :func:`read` looks in the local cache first."""
    _check_exists(path)
    for key in PRIORITY:
        spec = _load(key)
        if spec is not None and spec.sniff(path):
            return spec
    raise UnknownFormatError(
        f"{path}: not a checkpoint nvfp4tools can read (no *.safetensors, no GGUF file)",
        hint=f"supported formats: {', '.join(names())}")


def read(path: str, format: str | None = None) -> Checkpoint:
    """Read PATH's headers into a :class:`Checkpoint`, detecting the format unless given.

    A Hub id is read from a complete snapshot in the local Hugging Face cache when there is one,
    else from its remote headers (see :mod:`nvfp4tools.formats.hub`)."""
    from . import hub
    if hub.is_hub_id(path):
        return hub.read(path, format)
    _check_exists(path)
    spec = get(format) if format else detect(path)
    return spec.read(path)
