"""The engine-compatibility model's types. Facts (:mod:`.facts`) are rows of these; rules
(:mod:`.rules`) evaluate a checkpoint against them. Stdlib only: ``inspect`` and ``estimate``
use it without importing anything heavy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from nvfp4tools.model import Finding

Engine = Literal["vllm", "sglang", "llamacpp"]
ENGINES: tuple[Engine, ...] = ("vllm", "sglang", "llamacpp")
ENGINE_NAMES = {"vllm": "vLLM", "sglang": "SGLang", "llamacpp": "llama.cpp"}
CC = tuple[int, int]   # compute capability (major, minor)


def parse_cc(text: str) -> CC:
    major, _, minor = text.partition(".")
    return int(major), int(minor or 0)


def cc_text(cc: CC) -> str:
    return f"sm_{cc[0]}{cc[1]}"


@dataclass(frozen=True)
class Source:
    """Where a fact was read: the engine's own source file and function, and the engine
    versions it was checked against."""

    file: str                   # path inside the engine's repository
    symbol: str                 # function, class or constant
    versions: str               # the releases the fact holds for, e.g. ">= 0.11.0" or "checked at b7400"
    ref: str = ""               # an issue or PR that shows the behaviour to users

    def cite(self) -> str:
        return f"{self.file} {self.symbol} ({self.versions})" + (f"; {self.ref}" if self.ref else "")


@dataclass(frozen=True)
class Release:
    """The engine version every fact was last checked against."""

    engine: Engine
    version: str
    commit: str
    date: str


@dataclass(frozen=True)
class Shape:
    """Multiples a GEMM's dimensions must have (per GPU, after tensor parallelism). Linear layers:
    N (output features), K (input features); MoE: the model's hidden size and the experts'
    intermediate size."""

    n: int = 1
    k: int = 1
    hidden: int = 1
    intermediate: int = 1
    message: str = ""            # the engine's own message, with {n} {k} {hidden} {intermediate} {backend}

    def misses(self, n: int, k: int, hidden: int, intermediate: int) -> bool:
        return bool(n % self.n or k % self.k or hidden % self.hidden or intermediate % self.intermediate)


@dataclass(frozen=True)
class Note:
    """A fact that is a sentence: what the engine does, and where that was read."""

    note: str
    source: Source


@dataclass(frozen=True)
class FormatFact:
    supported: bool
    note: str
    source: Source


@dataclass(frozen=True)
class MxLayout:
    """How a kernel re-stores MXFP4 expert weights after loading, in its own swizzled layout:
    each tensor zero-padded to the layout's tiles (per expert, on the GEMM's [N, K] as created,
    N output rows, K input features), and the expert biases cast to another dtype. The new
    tensors replace the loaded ones, so the padding and the wider biases stay in memory."""

    value_rows: int              # E2M1 codes: N padded to a multiple of this
    value_k_bytes: int           # ... and the packed bytes along K (K / 2) likewise
    scale_rows: int              # E8M0 block scales: N padded to a multiple of this
    scale_groups: int            # ... and the scale groups along K (K / 32) likewise
    bias_bytes: int              # bytes per element of the expert biases after the cast
    source: Source
    note: str = ""


@dataclass(frozen=True)
class KernelPath:
    """One way an engine runs a quantized layer on a class of GPUs.

    Rows are tried in table order for (engine, layer kind, weight family, checkpoint format); the
    first whose compute-capability range holds is the path the engine takes, as its own selection
    code orders them.
    """

    id: str
    engine: Engine
    layer: Literal["linear", "moe"]
    weights: str                 # weight family: nvfp4 | mxfp4 | fp8 | int4 | int8 | ggml
    cc_min: CC
    cc_max: CC                   # inclusive
    kernel: str                  # as users see it in logs: "CUTLASS FP4 GEMM", "Marlin FP4 (W4A16)"
    compute: str                 # what the GEMM multiplies: "W4A4", "W4A16", "W8A8", "dequant + BF16"
    source: Source
    formats: tuple[str, ...] = ()     # checkpoint formats (registry keys) it serves; () = any
    requires: Shape | None = None     # the engine tries its next kernel when this does not hold
    fails: Shape | None = None        # ... or fails at load
    group_sizes: tuple[int, ...] = ()  # accepted group sizes (-1: per channel); others go to the next kernel
    pads: str | None = None      # how the engine pads shapes in memory: "marlin", "marlin_moe", "native32"
    pad_hidden: int = 1          # MoE: hidden size rounded up to a multiple at weight creation
    pad_intermediate: int = 1    # MoE: expert intermediate size (per GPU) rounded up likewise
    layout: MxLayout | None = None     # MoE: the kernel's own layout, applied after that rounding
    ignores: tuple[str, ...] = ()      # stored parts the kernel does not use (PartRole names)
    input_scale: str | None = None     # MoE W4A4: "max" (one maximum over experts) or None (per expert)
    note: str = ""


@dataclass(frozen=True)
class KVDtypeFact:
    """Whether an engine can hold its KV cache in a dtype on a class of GPUs."""

    engine: Engine
    kv_dtype: str
    cc_min: CC
    cc_max: CC
    supported: bool
    source: Source
    note: str = ""


@dataclass(frozen=True)
class GGMLTypeFact:
    """Whether an engine reads a GGML tensor type, and since which version."""

    engine: Engine
    ggml_type: str               # lower-case name as nvfp4tools' schemes spell it ("q4_0", "nvfp4")
    since: str | None            # first version that reads it; None: no version does
    source: Source
    note: str = ""


@dataclass(frozen=True)
class LoaderFact:
    """How an engine's model loader treats a checkpoint's expert tensor names for an architecture.

    Holds for the checked release when ``fixed_in`` is None; otherwise only releases in
    ``affected`` are hit, and the finding is a warning about them."""

    id: str
    engine: Engine
    model_types: tuple[str, ...]     # config.json model_type (text model), e.g. "gemma4_text"
    formats: tuple[str, ...]         # checkpoint formats (registry keys)
    experts: str                     # "per-expert" or "fused": the checkpoint's expert layout
    weights: tuple[str, ...]         # weight families it concerns ("nvfp4", "nvfp4a16")
    consequence: str                 # what happens at load
    affected: str                    # the releases it holds for
    source: Source
    fixed_in: str | None = None


@dataclass(frozen=True)
class PathUse:
    """A kernel path and the quantized tensors the engine sends through it."""

    path: KernelPath
    n_tensors: int
    roles: tuple[str, ...]
    scheme: str


@dataclass(frozen=True)
class Assessment:
    """What one engine does with one checkpoint on one class of GPUs."""

    engine: Engine
    release: Release
    ccs: tuple[CC, ...]          # the GPU classes this answer covers; () where it does not depend on the GPU
    gpus: tuple[str, ...]        # GPU table keys this answer covers
    loads: bool                  # no error-level finding: the engine is expected to load and run it
    paths: tuple[PathUse, ...] = ()
    findings: tuple[Finding, ...] = field(default=())
