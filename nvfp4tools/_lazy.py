"""A module imported on first use.

numpy costs 0.2-0.35 s of CPU to import on the 2-core machines we measure on (OpenBLAS starts
its threads at import), which is a third of all the CPU time of a lossless ModelOpt <->
compressed-tensors conversion, where no array is ever built (bench/RESULTS.md, convert). Modules
whose fast path is stdlib-only but whose other paths need numpy name it through this proxy.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class LazyModule:
    """Stands for the module NAME; imports it at the first attribute access."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._module: ModuleType | None = None

    def __getattr__(self, attr: str):
        if self._module is None:
            self._module = importlib.import_module(self._name)
        return getattr(self._module, attr)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}{' (imported)' if self._module is not None else ''}>"
