"""The compatibility rules as the Markdown table in docs/engine-compat.md (generated from
:mod:`.facts`, so the docs cannot drift from what the code checks; tests compare the two)."""

from __future__ import annotations

from . import facts
from .model import ENGINE_NAMES, cc_text
from .rules import padding_rule

BEGIN = "<!-- BEGIN GENERATED: python -m nvfp4tools.compat.table --update docs/engine-compat.md -->"
END = "<!-- END GENERATED -->"


def _hi(cc) -> str:
    return f"sm_{cc[0]}x" if cc[1] == 9 else cc_text(cc)


def _cc(lo, hi) -> str:
    if lo == (0, 0) and hi == (99, 9):
        return "any"
    if lo == (0, 0):
        return f"up to {_hi(hi)}"
    return cc_text(lo) if lo == hi else f"{cc_text(lo)}-{_hi(hi)}"


def _esc(s: str) -> str:
    return s.replace("|", "\\|")


def render() -> str:
    out = [BEGIN, "", "### Releases checked", "", "| engine | release | commit | read from |", "|---|---|---|---|"]
    for r in facts.RELEASES.values():
        out.append(f"| {ENGINE_NAMES[r.engine]} | {r.version} | {r.commit or '-'} | {r.date} |")
    out += ["", "### Kernel paths (first matching row wins, in the engine's own order)", "",
            "| id | GPUs | layer | weights | formats | kernel | computes | constraints | ignores | source |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for p in facts.KERNEL_PATHS:
        cons = []
        if p.requires:
            cons.append("needs " + _shape(p.requires) + " (else next row)")
        if p.group_sizes:
            cons.append("groups " + "/".join(map(str, p.group_sizes)) + " (else next row)")
        if p.fails:
            cons.append("fails at load unless " + _shape(p.fails))
        if padding_rule(p) != "none":
            cons.append("pads " + padding_rule(p))
        if p.input_scale == "max":
            cons.append("one input scale: max over experts")
        out.append(f"| `{p.id}` | {_cc(p.cc_min, p.cc_max)} | {p.layer} | {p.weights} | {', '.join(p.formats) or 'any'} "
                   f"| {p.kernel} | {p.compute} | {_esc('; '.join(cons)) or '-'} | {', '.join(p.ignores) or '-'} "
                   f"| {_esc(p.source.cite())} |")
    out += ["", "### Refusals, scales and loaders", "", "| rule | engine | what happens | source |", "|---|---|---|---|"]
    for (engine, kind, fam), n in facts.NO_PATH.items():
        out.append(f"| no kernel: {fam} {kind} | {ENGINE_NAMES[engine]} | {_esc(n.note)} | {_esc(n.source.cite())} |")
    for (engine, fam), (cc, n) in facts.MIN_CC.items():
        out.append(f"| {fam} below {cc_text(cc)} | {ENGINE_NAMES[engine]} | {_esc(n.note)} | {_esc(n.source.cite())} |")
    for engine, n in facts.MISSING_EXPERT_INPUT_SCALE.items():
        out.append(f"| experts without input_scale (W4A4 MoE kernels) | {ENGINE_NAMES[engine]} | {_esc(n.note)} "
                   f"| {_esc(n.source.cite())} |")
    out.append(f"| Marlin shapes off its tiles | vLLM, SGLang | padded; {_esc(facts.MARLIN_LEGACY_SHAPE.note)} "
               f"| {_esc(facts.MARLIN_LEGACY_SHAPE.source.cite())} |")
    out.append(f"| Marlin FP4 block-scale re-encoding | vLLM | block scales below 2^-6 after a power-of-two rescale "
               f"(one per fused layer, per MoE layer over all experts) are set to zero: those blocks decode as 0 "
               f"(inspect --deep counts them) | {_esc(facts.MARLIN_FLUSH.cite())} |")
    for f in facts.LOADERS:
        when = f"releases {f.affected}" + (f", fixed in {f.fixed_in}" if f.fixed_in else "")
        out.append(f"| `{f.id}` ({', '.join(f.model_types)}, {f.experts} experts, {', '.join(f.formats)}) "
                   f"| {ENGINE_NAMES[f.engine]} | {_esc(f.consequence)} ({when}) | {_esc(f.source.cite())} |")
    for n in (facts.LLAMACPP_CONVERTER_GROUPS, facts.LLAMACPP_NVFP4_ROW):
        out.append(f"| converting to GGUF | llama.cpp | {_esc(n.note)} | {_esc(n.source.cite())} |")
    out.append(f"| NVFP4 `.scale` the graph never applies | llama.cpp | per architecture: "
               f"formats/gguf_arch.py GRAPH_SCALED | {_esc(facts.LLAMACPP_GRAPH_SCALES.cite())} |")
    out += ["", "### KV-cache dtypes", "", "| engine | dtype | GPUs | supported | note | source |", "|---|---|---|---|---|---|"]
    for k in facts.KV_DTYPES:
        out.append(f"| {ENGINE_NAMES[k.engine]} | {k.kv_dtype} | {_cc(k.cc_min, k.cc_max)} | "
                   f"{'yes' if k.supported else 'no'} | {_esc(k.note) or '-'} | {_esc(k.source.cite())} |")
    out += ["", "### Formats and GGML types", "", "| engine | format or type | reads it | note | source |",
            "|---|---|---|---|---|"]
    for (engine, fmt), f in facts.FORMAT_SUPPORT.items():
        out.append(f"| {ENGINE_NAMES[engine]} | {fmt} | {'yes' if f.supported else 'no'} | {_esc(f.note)} "
                   f"| {_esc(f.source.cite())} |")
    for g in facts.GGML_TYPES:
        out.append(f"| {ENGINE_NAMES[g.engine]} | GGML {g.ggml_type.upper()} | "
                   f"{'since ' + g.since if g.since else 'no'} | {_esc(g.note) or '-'} | {_esc(g.source.cite())} |")
    out += ["", END]
    return "\n".join(out)


def _shape(s) -> str:
    parts = [f"{d} % {m} == 0" for d, m in (("N", s.n), ("K", s.k), ("hidden", s.hidden),
                                             ("intermediate", s.intermediate)) if m > 1]
    return " and ".join(parts)


def update(path: str) -> None:
    """Replace the generated block of PATH (docs/engine-compat.md) with :func:`render`'s."""
    with open(path) as fh:
        doc = fh.read()
    i, j = doc.index(BEGIN), doc.index(END) + len(END)
    with open(path, "w") as fh:
        fh.write(doc[:i] + render() + doc[j:])


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["--update"]:
        update(sys.argv[2])
    else:
        print(render())
