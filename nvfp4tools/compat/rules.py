"""Evaluate a checkpoint against the engine facts: which kernel path each quantized layer takes on
an engine and a class of GPUs, and what will fail or silently change there.

Every finding names the engine, what happens there and the rule's source; the severity is the
consequence on that engine and GPU ("error": the engine refuses the checkpoint or computes wrong
numbers; "warning": it runs, with a documented degradation; "info": how it runs). Callers that
did not name the deployment (``inspect`` without ``--engine``/``--gpu``) lower errors to
warnings: such a checkpoint is not broken, only unfit for that one deployment.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from nvfp4tools.model import Checkpoint, Finding, TensorInfo

from . import facts
from .model import CC, ENGINE_NAMES, Assessment, Engine, KernelPath, MxLayout, PathUse, cc_text

# projections an engine fuses into one GEMM; Marlin's shape check runs on the fused width
# (vLLM QKVParallelLinear / MergedColumnParallelLinear: output_size_per_partition is the sum)
_FUSED = {"q": "qkv", "k": "qkv", "v": "qkv", "gate": "gate_up", "up": "gate_up", "w1": "gate_up",
          "w3": "gate_up"}
# row-parallel projections: TP splits their input features, not their output features
_ROW_PARALLEL = frozenset({"o", "down", "w2", "out"})
_MAX_EXAMPLES = 3


def weight_family(t: TensorInfo) -> str | None:
    """The family a kernel table keys on, or None for unquantized tensors: nvfp4 (W4A4, a static
    input scale stored), nvfp4a16, int4, int4-actorder, int8a16 (weight-only int8 packed in int32
    words: compressed-tensors pack-quantized), int8a16-unpacked (stored as int8: int-quantized),
    int8 (W8A8), fp8, mxfp4, ggml."""
    s = t.scheme
    if not s.quantized:
        return None
    if s.element == "ggml":
        return "ggml"
    if s.name == "nvfp4":
        return "nvfp4" if s.activations else "nvfp4a16"
    if s.element == "int4":
        return "int4-actorder" if s.name.endswith("-actorder") else "int4"
    if s.element == "int8" and s.activations is None:
        d = t.part("data")
        return "int8a16-unpacked" if d is not None and d.stored_dtype == "I8" else "int8a16"
    return s.name


def layer_kind(t: TensorInfo) -> str:
    return "moe" if t.role == "experts" else "linear"


def _linears(ckpt: Checkpoint) -> list[TensorInfo]:
    """Quantized weights that an engine runs through a GEMM (embeddings are gathered, not multiplied)."""
    return [t for t in ckpt.tensors.values()
            if t.scheme.quantized and len(t.shape) >= 2 and t.role not in ("embedding", "norm", "router")]


@dataclass(frozen=True)
class Target:
    engine: Engine
    cc: CC | None
    gpus: tuple[str, ...] = ()
    tp: int = 1
    kv_dtype: str | None = None     # the KV-cache dtype the deployment asks for (estimate, check)


def assess(ckpt: Checkpoint, target: Target, where: str | None = None, prep: Prepared | None = None) -> Assessment:
    """What TARGET's engine does with CKPT on its GPU class. WHERE labels the findings
    (default: "vLLM on sm_89"); PREP is :func:`prepare`'s result when assessing many targets."""
    findings: list[Finding] = []
    uses: list[PathUse] = []
    engine = target.engine
    name = ENGINE_NAMES[engine]
    if where is None:
        where = name if target.cc is None else f"{name} on {cc_text(target.cc)}"
    if engine == "llamacpp":
        findings += _llamacpp(ckpt, where)
    elif ckpt.format == "gguf":
        findings += _gguf_elsewhere(ckpt, engine, where)
    else:
        assert target.cc is not None
        if prep is None or prep.tp != target.tp:
            prep = prepare(ckpt, target.tp)
        u, f = _kernel_paths(ckpt, engine, target.cc, prep, where)
        uses += u
        findings += f
        findings += _expert_scales(prep.lacking, u, where)
        findings += _loaders(prep.loader_hits, engine, where)
    if target.kv_dtype and target.cc is not None:
        findings += _kv_dtype(engine, target.kv_dtype, target.cc, where)
    loads = not any(f.severity == "error" for f in findings)
    ccs = () if target.cc is None else (target.cc,)
    return Assessment(engine, facts.RELEASES[engine], ccs, target.gpus, loads, tuple(uses), tuple(findings))


# -- kernel paths ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Gemm:
    """One GEMM the engine builds, per GPU: fused siblings summed, tensor parallelism applied.
    MoE GEMMs carry the model's hidden size and the experts' intermediate size."""

    name: str
    n: int
    k: int
    hidden: int
    intermediate: int
    group: int                   # quantization group size; -1 per channel
    tensors: tuple[TensorInfo, ...]
    row_parallel: bool = False   # o/down projections: TP splits K


def _group(t: TensorInfo) -> int:
    return t.scheme.block_size or -1


def gemms(ts: list[TensorInfo], tp: int = 1) -> list[Gemm]:
    groups: dict[tuple, list[TensorInfo]] = {}
    for t in ts:
        fuse = _FUSED.get(t.proj or "")
        key = (t.module.rsplit(".", 1)[0], t.expert, fuse) if fuse else (t.name,)
        groups.setdefault(key, []).append(t)
    out = []
    for members in groups.values():
        t0 = members[0]
        n = sum(t.shape[-2] for t in members)
        k = t0.shape[-1]
        row_parallel = (t0.proj or "") in _ROW_PARALLEL
        if tp > 1:
            if row_parallel:
                k //= tp
            else:
                n //= tp
        if t0.role == "experts":   # gate/up: [I, H] (fused: [2I, H]); down: [H, I]
            hidden, inter = (n, k) if row_parallel else (k, n // 2 if (t0.proj in ("gate_up",) or len(members) > 1)
                                                          else n)
        else:
            hidden, inter = k, n
        out.append(Gemm(t0.name, n, k, hidden, inter, _group(t0), tuple(members), row_parallel))
    return out


def kernel_path(engine: Engine, kind: str, family: str, cc: CC, fmt: str, g: Gemm | None = None) -> KernelPath | None:
    """The path ENGINE takes for a KIND ("linear"/"moe") GEMM of weight FAMILY on a GPU of compute
    capability CC, for a checkpoint of format FMT (and, given G, its shape and group size); None:
    no kernel this model knows of."""
    for p in facts.KERNEL_PATHS:
        if p.engine != engine or p.layer != kind or p.weights != family or not (p.cc_min <= cc <= p.cc_max):
            continue
        if p.formats and fmt not in p.formats:
            continue
        if g is not None:
            if p.requires and p.requires.misses(g.n, g.k, g.hidden, g.intermediate):
                continue
            if p.group_sizes and g.group not in p.group_sizes:
                continue
        return p
    return None


def _examples(items: list[str]) -> str:
    more = f" (+{len(items) - _MAX_EXAMPLES} more)" if len(items) > _MAX_EXAMPLES else ""
    return ", ".join(items[:_MAX_EXAMPLES]) + more


@dataclass
class _Shape:
    """The GEMMs of one weight family and layer kind that share a shape and group size: a kernel
    path is chosen once per shape, not once per tensor (a 128-expert MoE has ~12,000 tensors and
    a dozen shapes)."""

    gemms: list[Gemm]
    n_tensors: int = 0
    roles: set = field(default_factory=set)
    schemes: Counter = field(default_factory=Counter)
    parts: dict = field(default_factory=dict)      # part role a kernel may ignore -> (tensors holding it, first name)

    @property
    def g(self) -> Gemm:
        return self.gemms[0]


@dataclass
class Prepared:
    """Everything an assessment needs from the checkpoint that does not depend on the engine or
    the GPU, computed once for :func:`nvfp4tools.compat.assess_all`'s many targets."""

    tp: int
    shapes: dict[tuple[str, str], dict[tuple, _Shape]]
    first: dict[tuple[str, str], TensorInfo]
    counts: dict[tuple[str, str], int]
    lacking: list[TensorInfo]                     # lacking_expert_input_scales
    loader_hits: dict[str, list[TensorInfo]]


def prepare(ckpt: Checkpoint, tp: int = 1) -> Prepared:
    by: dict[tuple[str, str], list[TensorInfo]] = {}
    for t in _linears(ckpt):
        fam = weight_family(t)
        assert fam is not None
        by.setdefault((layer_kind(t), fam), []).append(t)
    ignorable = {r for p in facts.KERNEL_PATHS for r in p.ignores}
    shapes: dict[tuple[str, str], dict[tuple, _Shape]] = {}
    for key, ts in by.items():
        per: dict[tuple, _Shape] = {}
        for g in gemms(ts, tp):
            sh = per.get(sig := (g.n, g.k, g.hidden, g.intermediate, g.group, g.row_parallel))
            if sh is None:
                sh = per[sig] = _Shape([])
            sh.gemms.append(g)
            sh.n_tensors += len(g.tensors)
            for t in g.tensors:
                sh.roles.add(t.role)
                sh.schemes[t.scheme.name] += 1
                for q in t.parts:
                    if q.role in ignorable:
                        n, first = sh.parts.get(q.role, (0, t.name))
                        sh.parts[q.role] = (n + 1, first)
        shapes[key] = per
    return Prepared(tp, shapes, {k: v[0] for k, v in by.items()}, {k: len(v) for k, v in by.items()},
                    lacking_expert_input_scales(ckpt), loader_hits(ckpt))


def _kernel_paths(ckpt: Checkpoint, engine: Engine, cc: CC, prep: Prepared, where: str
                  ) -> tuple[list[PathUse], list[Finding]]:
    uses: list[PathUse] = []
    out: list[Finding] = []
    for (kind, fam), per in prep.shapes.items():
        what = f"{fam} {'MoE experts' if kind == 'moe' else 'linear layers'}"
        low = facts.MIN_CC.get((engine, fam.removesuffix("a16")))
        if low and cc < low[0]:
            out.append(Finding("engine_no_kernel", "error", f"{where}: {low[1].note}; {prep.counts[(kind, fam)]} "
                               f"{what} cannot load", tensor=prep.first[(kind, fam)].name, source=low[1].source.cite()))
            continue
        chosen: dict[str, tuple[KernelPath, list[_Shape]]] = {}
        unserved: list[_Shape] = []
        for sh in per.values():
            p = kernel_path(engine, kind, fam, cc, ckpt.format, sh.g)
            if p is None:
                unserved.append(sh)
            else:
                chosen.setdefault(p.id, (p, []))[1].append(sh)
        if unserved:
            why = facts.NO_PATH.get((engine, kind, fam))
            if why is not None or any(q.engine == engine and q.layer == kind and q.weights == fam
                                      for q in facts.KERNEL_PATHS):
                g = unserved[0].g
                out.append(Finding(
                    "engine_no_kernel", "error",
                    f"{where}: no kernel runs {sum(len(u.gemms) for u in unserved)} {what} "
                    f"(e.g. {g.name}, N={g.n}, K={g.k}, group {g.group})"
                    + (f": {why.note}" if why else f"; the engine's kernels for {fam} on this GPU all refuse them"),
                    tensor=g.name, source=why.source.cite() if why else None))
            # no row at all: the model knows nothing about this family here and claims nothing
        for p, shs in chosen.values():
            schemes: Counter = Counter()
            for sh in shs:
                schemes.update(sh.schemes)
            uses.append(PathUse(p, sum(sh.n_tensors for sh in shs), tuple(sorted(set().union(*(sh.roles for sh in shs)))),
                                schemes.most_common(1)[0][0]))
            out += _path_findings(p, shs, fam, kind, prep.tp, where)
    return uses, out


def _path_findings(p: KernelPath, shs: list[_Shape], fam: str, kind: str, tp: int, where: str) -> list[Finding]:
    out = []
    at_tp = f" per GPU at TP={tp}" if tp > 1 else ""
    if p.fails:
        bad = [g for sh in shs if p.fails.misses(sh.g.n, sh.g.k, sh.g.hidden, sh.g.intermediate) for g in sh.gemms]
        if bad:
            g = bad[0]
            need = ", ".join(f"{d} a multiple of {m}" for d, m in (("N", p.fails.n), ("K", p.fails.k), (
                "the hidden size", p.fails.hidden), ("the expert intermediate size", p.fails.intermediate)) if m > 1)
            msg = p.fails.message.format(n=g.n, k=g.k, hidden=g.hidden, intermediate=g.intermediate, backend=p.kernel)
            out.append(Finding(
                "engine_shape", "error",
                f"{where}: {p.kernel} needs {need}{at_tp}; {len(bad)} GEMMs are not "
                f"({_examples([f'{b.name} (N={b.n}, K={b.k})' for b in bad])}): the engine fails at load "
                f"('{msg}'); keep these layers unquantized, change the TP size, or use another GPU",
                tensor=g.name, source=p.source.cite()))
    if p.pads == "marlin" and kind == "linear":
        legacy = [g for sh in shs if sh.g.n % 64 or sh.g.k % 128 for g in sh.gemms]
        if legacy:
            out.append(Finding(
                "engine_shape_padded", "warning",
                f"{where}: {len(legacy)} {fam} GEMMs have N not a multiple of 64 or K not a multiple of 128"
                f"{at_tp} ({_examples([f'{g.name} (N={g.n}, K={g.k})' for g in legacy])}); {p.kernel} zero-pads "
                f"them (padded activations and outputs on every forward); {facts.MARLIN_LEGACY_SHAPE.note}",
                tensor=legacy[0].name, source=f"{p.source.cite()}; {facts.MARLIN_LEGACY_SHAPE.source.ref}"))
    roles = sorted({r for sh in shs for r in sh.parts if r in p.ignores})
    if roles:
        n = sum(max(sh.parts[r][0] for r in roles if r in sh.parts) for sh in shs if any(r in sh.parts for r in roles))
        first = next(sh.parts[r][1] for sh in shs for r in roles if r in sh.parts)
        out.append(Finding(
            "engine_scales_ignored", "info",
            f"{where}: {n} {fam} {'expert' if kind == 'moe' else 'linear'} tensors run weight-only "
            f"({p.kernel}, {p.compute}): their {', '.join(r.replace('_', ' ') + 's' for r in roles)} are not used",
            tensor=first, source=p.source.cite() + (f"; {p.note}" if p.note else "")))
    return out


# -- scales an engine needs ------------------------------------------------------------------

def lacking_expert_input_scales(ckpt: Checkpoint) -> list[TensorInfo]:
    """Per-expert NVFP4 tensors without a static input scale in a layer whose other experts have one."""
    by_layer: dict[tuple, list[TensorInfo]] = {}
    for t in ckpt.tensors.values():
        if t.role == "experts" and t.scheme.name == "nvfp4" and t.expert is not None:
            by_layer.setdefault((t.stack, t.layer), []).append(t)
    lacking: list[TensorInfo] = []
    for ts in by_layer.values():
        if any(t.part("input_scale") is not None for t in ts):
            lacking += [t for t in ts if t.part("input_scale") is None]
    return lacking


def _expert_scales(lacking: list[TensorInfo], uses: list[PathUse], where: str) -> list[Finding]:
    """Experts without a static input scale where their siblings have one, on a W4A4 MoE path:
    the engine's per-expert parameter keeps whatever it was created with (vLLM: torch.empty ->
    1/0 -> inf -> NaN on prompts routed there; SGLang: 1.0)."""
    moe = [u for u in uses if u.path.layer == "moe" and "input_scale" not in u.path.ignores
           and u.path.compute == "W4A4"]
    if not moe or not lacking:
        return []
    fact = facts.MISSING_EXPERT_INPUT_SCALE[uses[0].path.engine] if uses[0].path.engine in \
        facts.MISSING_EXPERT_INPUT_SCALE else None
    experts = sorted({(t.layer, t.expert) for t in lacking})
    ex = ", ".join(f"layer {l} expert {e}" for l, e in experts[:_MAX_EXAMPLES])
    more = f" (+{len(experts) - _MAX_EXAMPLES} more)" if len(experts) > _MAX_EXAMPLES else ""
    return [Finding("engine_missing_expert_input_scale", "error",
                    f"{where}: {len(experts)} experts have no input_scale while their layer's other experts do "
                    f"({ex}{more}); {fact.note if fact else 'the W4A4 MoE kernel needs one per expert'}; "
                    "recalibrate with more tokens, or give these experts their layer's maximum input scale",
                    tensor=lacking[0].name, source=fact.source.cite() if fact else None)]


# -- model loaders ---------------------------------------------------------------------------

def _model_type(ckpt: Checkpoint) -> str:
    if ckpt.arch is not None:
        return ckpt.arch.model_type
    return str(ckpt.config.get("model_type") or "")


def loader_hits(ckpt: Checkpoint) -> dict[str, list[TensorInfo]]:
    """LoaderFact id -> the checkpoint's expert tensors it concerns (facts that do not apply: absent)."""
    mt = _model_type(ckpt)
    out = {}
    for f in facts.LOADERS:
        if mt not in f.model_types or ckpt.format not in f.formats:
            continue
        hit = [t for t in ckpt.tensors.values() if t.role == "experts" and weight_family(t) in f.weights
               and (f.experts == "any" or (f.experts == "fused") == bool(t.n_experts_fused))]
        if hit:
            out[f.id] = hit
    return out


def _loaders(hits: dict[str, list[TensorInfo]], engine: Engine, where: str) -> list[Finding]:
    out = []
    for f in facts.LOADERS:
        hit = hits.get(f.id)
        if f.engine != engine or not hit:
            continue
        if f.fixed_in is None:
            out.append(Finding("engine_loader", "error", f"{where}: {f.consequence} ({len(hit)} expert tensors, e.g. "
                               f"{hit[0].name})", tensor=hit[0].name, source=f.source.cite()))
        else:
            out.append(Finding("engine_loader_old", "warning", f"{where}: {f.consequence} (vLLM {f.affected}; fixed in "
                               f"{f.fixed_in})", tensor=hit[0].name, source=f.source.cite()))
    return out


# -- KV cache --------------------------------------------------------------------------------

def kv_dtype_fact(engine: Engine, kv_dtype: str, cc: CC):
    for f in facts.KV_DTYPES:
        if f.engine == engine and f.kv_dtype == kv_dtype and f.cc_min <= cc <= f.cc_max:
            return f
    return None


def _kv_dtype(engine: Engine, kv_dtype: str, cc: CC, where: str) -> list[Finding]:
    f = kv_dtype_fact(engine, kv_dtype, cc)
    if f is None or f.supported:
        return []
    return [Finding("engine_kv_dtype", "error", f"{where}: KV cache dtype {kv_dtype}: {f.note}", source=f.source.cite())]


# -- GGUF ------------------------------------------------------------------------------------

def _ggml_types(ckpt: Checkpoint) -> Counter:
    """GGML tensor types as stored (a GGUF's NVFP4 tensors read as the nvfp4 scheme, stored as type NVFP4)."""
    out: Counter = Counter()
    if ckpt.format != "gguf":
        return out
    for t in ckpt.tensors.values():
        d = t.part("data")
        if d is not None and d.stored_dtype.upper() not in ("F32", "F16", "BF16", "F64", "I8", "I16", "I32", "I64"):
            out[d.stored_dtype.lower()] += 1
    return out


def _ggml_fact(engine: Engine, ggml_type: str):
    for f in facts.GGML_TYPES:
        if f.engine == engine and f.ggml_type == ggml_type:
            return f
    return None


def _gguf_elsewhere(ckpt: Checkpoint, engine: Engine, where: str) -> list[Finding]:
    fmt = facts.FORMAT_SUPPORT.get((engine, "gguf"))
    if fmt is not None and not fmt.supported:
        return [Finding("engine_format", "error", f"{where}: {fmt.note}", source=fmt.source.cite())]
    out = []
    for ty, n in sorted(_ggml_types(ckpt).items()):
        f = _ggml_fact(engine, ty)
        if f is not None and f.since is None:
            out.append(Finding("engine_ggml_type", "error",
                               f"{where}: {n} tensors are {ty.upper()}, a GGML type {ENGINE_NAMES[engine]} does not "
                               f"read{': ' + f.note if f.note else ''}; run it with llama.cpp, or convert to "
                               f"safetensors (nvfp4tools convert --to compressed-tensors)", source=f.source.cite()))
    return out


def _llamacpp(ckpt: Checkpoint, where: str) -> list[Finding]:
    if ckpt.format != "gguf":
        f = facts.FORMAT_SUPPORT[("llamacpp", "safetensors")]
        return [Finding("engine_format", "error", f"{where}: {f.note}", source=f.source.cite())] + \
            _llamacpp_conversion(ckpt, where)
    out = []
    for ty, n in sorted(_ggml_types(ckpt).items()):
        f = _ggml_fact("llamacpp", ty)
        if f is not None and f.since is not None:
            out.append(Finding("engine_min_version", "info",
                               f"{where}: {n} tensors are {ty.upper()}; llama.cpp builds before {f.since} refuse "
                               f"the file{' (' + f.note + ')' if f.note else ''}", source=f.source.cite()))
    out += _llamacpp_graph_scales(ckpt, where)
    return out


def _llamacpp_conversion(ckpt: Checkpoint, where: str) -> list[Finding]:
    """What stands between this safetensors checkpoint and a GGUF llama.cpp runs (info: the
    checkpoint is not at fault, the conversion path is)."""
    out = []
    qc = ckpt.config.get("quantization_config") if isinstance(ckpt.config, dict) else None
    groups = qc.get("config_groups") if isinstance(qc, dict) and ckpt.format == "compressed-tensors" else None
    if isinstance(groups, dict) and len(groups) > 1:
        fmts = {str(g.get("format") or qc.get("format")) for g in groups.values() if isinstance(g, dict)}
        if fmts != {"nvfp4-pack-quantized"}:
            n = facts.LLAMACPP_CONVERTER_GROUPS
            out.append(Finding("engine_converter", "info", f"{where}: {n.note} ({len(groups)} groups: "
                               f"{', '.join(sorted(fmts))}); nvfp4tools convert --to gguf converts it",
                               source=n.source.cite()))
    odd = [t for t in ckpt.tensors.values() if t.scheme.name == "nvfp4" and t.shape[-1] % 64]
    if odd:
        n = facts.LLAMACPP_NVFP4_ROW
        out.append(Finding("engine_converter", "info", f"{where}: {len(odd)} NVFP4 tensors have in_features not a "
                           f"multiple of 64 (e.g. {odd[0].name}, {odd[0].shape[-1]}): {n.note}; this checkpoint has "
                           "no GGUF NVFP4 form (nvfp4tools convert --to gguf refuses it too): serve it with vLLM or "
                           "SGLang", tensor=odd[0].name,
                           source=n.source.cite()))
    return out


def _llamacpp_graph_scales(ckpt: Checkpoint, where: str) -> list[Finding]:
    """NVFP4 tensors whose per-tensor scale llama.cpp's graph for this architecture never applies."""
    from nvfp4tools.formats.gguf_arch import scaled_in_llama_cpp

    from nvfp4tools.formats.gguf_arch import GRAPH_SCALED

    arch = str(ckpt.metadata.get("architecture") or "")
    arch_key = arch.upper().replace("-", "_")   # GGUF "gpt-oss" is gguf.MODEL_ARCH.GPT_OSS

    if arch_key not in GRAPH_SCALED:
        return []
    bad = [t for t in ckpt.tensors.values() if t.scheme.name == "nvfp4" and t.part("global_scale") is not None
           and not scaled_in_llama_cpp(arch_key, t.name)]
    if not bad:
        return []
    src = facts.LLAMACPP_GRAPH_SCALES
    ex = ", ".join(t.name for t in bad[:_MAX_EXAMPLES])
    return [Finding("engine_scale_unused", "error",
                    f"{where}: {len(bad)} NVFP4 tensors carry a per-tensor scale that llama.cpp's {arch} graph never "
                    f"multiplies in ({ex}); those layers compute at the wrong magnitude (NaN or garbage logits); "
                    f"convert from the safetensors with nvfp4tools convert --to gguf, which refuses or keeps "
                    f"them BF16", tensor=bad[0].name, source=src.cite())]


# -- memory the engine adds by padding shapes ------------------------------------------------

def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def marlin_padded_nk(n: int, k: int, group: int) -> tuple[int, int]:
    """Marlin's padded (N, K): the smaller-area of (N to 64, K to lcm(128, g)) and (N to 128,
    K to lcm(64, g)); ties to the smaller N + K (vLLM marlin_utils.marlin_padded_nk; SGLang 0.5.23
    pads the same way)."""
    import math

    g = group if group > 0 else 1
    a = (_round_up(n, 64), _round_up(k, math.lcm(128, g)))
    b = (_round_up(n, 128), _round_up(k, math.lcm(64, g)))
    return min(a, b, key=lambda nk: (nk[0] * nk[1], nk[0] + nk[1]))


def _bytes_per_element(t: TensorInfo) -> float:
    return t.nbytes / t.n_elements if t.n_elements else 0.0


def padding_rule(p: KernelPath) -> str:
    """How path P pads shapes in memory, in words (docs table, estimate's kernel_padding term)."""
    if p.pads == "marlin":
        return "N to 64 and K to 128, or N to 128 and K to 64, whichever adds less"
    if p.pads == "marlin_moe":
        return "the experts' intermediate size per shard to 64 (to 128 when the hidden size is not a multiple of 128)"
    if p.pads == "native32":
        return "N and K to 32"
    sizes = [f"the {what} to {m}" for what, m in (("hidden size", p.pad_hidden),
                                                   ("experts' intermediate size", p.pad_intermediate)) if m > 1]
    rule = " and ".join(sizes)
    if p.layout is not None:
        rule = f"{rule}; then {p.layout.note}" if rule else p.layout.note
    return rule or "none"


def _pads(p: KernelPath | None) -> bool:
    return p is not None and (p.pads is not None or p.pad_hidden > 1 or p.pad_intermediate > 1)


def _padded_nk(p: KernelPath, g: Gemm) -> tuple[int, int]:
    """G's per-GPU (N, K) as path P stores it."""
    if p.pads == "marlin":
        return marlin_padded_nk(g.n, g.k, g.group)
    if p.pads == "native32":
        return _round_up(g.n, 32), _round_up(g.k, 32)
    if p.pads == "marlin_moe":
        # intermediate padded per gate/up shard, hidden never (prepare_nvfp4_moe_layer_for_marlin)
        step = 64 if g.hidden % 128 == 0 else 128
        i2 = _round_up(g.intermediate, step)
        if g.row_parallel:                                # down: [H, I]
            return g.n, i2
        return (g.n // g.intermediate) * i2, g.k          # gate/up shards: [shards * I, H]
    # MoE sizes rounded up at weight creation (MXFP4)
    h2, i2 = _round_up(g.hidden, p.pad_hidden), _round_up(g.intermediate, p.pad_intermediate)
    shards = max(1, g.n // g.intermediate) if not g.row_parallel else 1
    return (h2, i2) if g.row_parallel else (shards * i2, h2)


def _lead(t: TensorInfo) -> int:
    """Matrices in T (experts fused into one tensor: their count)."""
    lead = 1
    for d in t.shape[:-2]:
        lead *= d
    return lead


def _paths_by_gemm(ckpt: Checkpoint, engine: Engine, cc: CC, tp: int) -> list[tuple[Gemm, KernelPath]]:
    by: dict[tuple[str, str], list[TensorInfo]] = {}
    for t in _linears(ckpt):
        fam = weight_family(t)
        assert fam is not None
        by.setdefault((layer_kind(t), fam), []).append(t)
    out = []
    for (kind, fam), ts in by.items():
        for g in gemms(ts, tp):
            p = kernel_path(engine, kind, fam, cc, ckpt.format, g)
            if p is not None:
                out.append((g, p))
    return out


def padding_bytes(ckpt: Checkpoint, engine: Engine, cc: CC, tp: int = 1) -> tuple[int, list[KernelPath]]:
    """Bytes the engine's kernels add to the weights in memory (all GPUs together), and the paths
    that add them: shapes zero-padded to the kernel's tiles, then, where the path has its own
    layout (``KernelPath.layout``), the MXFP4 expert codes and block scales padded again to the
    layout's tiles and the expert biases (gpt-oss ``<experts>_bias``, stored beside the fused
    weight) cast to a wider dtype. Each GPU holds its own copy of what it converts, hence ``tp``."""
    total = 0.0
    used: dict[str, KernelPath] = {}
    for g, p in _paths_by_gemm(ckpt, engine, cc, tp):
        t = g.tensors[0]
        n2, k2 = _padded_nk(p, g) if _pads(p) else (g.n, g.k)
        extra = (n2 * k2 - g.n * g.k) * _lead(t) * tp * _bytes_per_element(t)
        if p.layout is not None:
            extra += _layout_bytes(p.layout, ckpt, g, n2, k2) * tp
        if extra:
            total += extra
            used[p.id] = p
    return int(total), list(used.values())


def _layout_bytes(lay: MxLayout, ckpt: Checkpoint, g: Gemm, n2: int, k2: int) -> float:
    """What layout LAY adds on one GPU to gemm G, created as N2 x K2 (the rounding above counted)."""
    block = g.group if g.group > 0 else 32
    lead = _lead(g.tensors[0])
    codes = _round_up(n2, lay.value_rows) * _round_up(k2 // 2, lay.value_k_bytes) - n2 * (k2 // 2)
    scales = _round_up(n2, lay.scale_rows) * _round_up(k2 // block, lay.scale_groups) - n2 * (k2 // block)
    extra = float((codes + scales) * lead)    # one byte per code pair and per E8M0 scale
    bias = ckpt.tensors.get(g.tensors[0].name + "_bias")
    if bias is not None:
        # the bias of the N outputs as created, minus this GPU's share of the stored bytes
        extra += lead * n2 * lay.bias_bytes - lead * g.n * _bytes_per_element(bias)
    return extra


# -- block scales Marlin flushes to zero (needs the block-scale bytes: inspect --deep) ---------

def e4m3_value(b: int) -> float:
    """A positive E4M3 byte's value (OCP FP8 E4M3: bias 7, subnormals below 2^-6)."""
    e, m = (b >> 3) & 0xF, b & 7
    return (m / 8) * 2.0 ** -6 if e == 0 else (1 + m / 8) * 2.0 ** (e - 7)


@dataclass(frozen=True)
class ScaleStats:
    """What inspect --deep saw in one tensor's E4M3 block-scale bytes."""

    max_byte: int                 # the largest positive, non-NaN byte (0 when none)
    small: tuple[int, ...]        # counts of bytes 0x01..0x07 (E4M3 subnormals)


def marlin_flushed(ckpt: Checkpoint, stats: dict[str, ScaleStats]) -> dict[str, int]:
    """Blocks of each NVFP4 tensor whose scale Marlin FP4 sets to zero: it rescales the layer's
    scales by sf = 2^floor(log2(448 / max scale)) (BF16 activations; one sf per fused layer, and
    per MoE layer over all experts), multiplies by 2^7 and zeroes what is below 2 (vLLM
    marlin_utils_fp4.py _nvfp4_compute_scale_factor, nvfp4_marlin_process_scales), i.e. every
    block scale below 2^-6 / sf."""
    import math

    nv = [t for t in _linears(ckpt) if t.scheme.name == "nvfp4" and t.name in stats]
    groups: list[list[TensorInfo]] = [list(g.tensors) for g in gemms([t for t in nv if t.role != "experts"])]
    moe: dict[tuple, list[TensorInfo]] = {}
    for t in nv:
        if t.role == "experts":
            moe.setdefault((t.stack, t.layer), []).append(t)
    groups += list(moe.values())
    out: dict[str, int] = {}
    for ts in groups:
        top = max(stats[t.name].max_byte for t in ts)
        if top == 0:
            continue
        sf = 2.0 ** math.floor(math.log2(448 / e4m3_value(top))) if e4m3_value(top) < 448 else 1.0
        for t in ts:
            n = sum(c for v, c in enumerate(stats[t.name].small, start=1) if e4m3_value(v) * sf < 2.0 ** -6)
            if n:
                out[t.name] = n
    return out


def marlin_flush_finding(label: str, ckpt: Checkpoint, flushed: dict[str, int]) -> Finding | None:
    if not flushed:
        return None
    worst = max(flushed, key=lambda n: flushed[n])
    t = ckpt.tensors[worst]
    blocks = t.n_elements // 16
    return Finding("engine_marlin_flush", "warning",
                   f"{label}: Marlin FP4 zeroes {sum(flushed.values())} blocks in {len(flushed)} NVFP4 tensors whose "
                   f"E4M3 block scale is below 2^-6 after its rescale (BF16 activations): those 16 weights decode "
                   f"as 0 (most: {worst}, {flushed[worst]} of {blocks} blocks); native FP4 kernels keep them",
                   tensor=worst, source=facts.MARLIN_FLUSH.cite())
