"""GPU backends for ``verify`` (torch, triton, scaled_mm, vllm, flashinfer). Importing this module
imports nothing heavy: each backend imports torch/triton only when asked whether it is available
or when it runs. Each declares when it is available and why not."""

from __future__ import annotations

from . import backends  # noqa: F401  (registers them)
