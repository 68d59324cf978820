"""``nvfp4tools estimate`` and ``nvfp4tools gpus``."""

from __future__ import annotations

from typing import Any

import click
from tabulate import tabulate


from ._output import emit, format_option, human_bytes

GiB = 2**30


@click.command("estimate")
@click.argument("path")
@click.option("--gpu", "gpu_name", default="rtx4090", show_default=True,
              help="GPU key from `nvfp4tools gpus`, several as a,b,c, 'all', or 'auto' (local GPU via nvidia-smi).")
@click.option("--vram", default=None, metavar="SIZE",
              help="Custom GPU memory with its unit (24GiB, 80GB, 512MiB); overrides the table's.")
@click.option("--engine", type=click.Choice(["vllm", "sglang", "llamacpp"]), default=None,
              help="Default: llamacpp for a GGUF, vllm otherwise.")
@click.option("--context", type=int, default=None, help="Tokens per sequence (vLLM max-model-len, llama.cpp n_ctx). "
              "Default: min(model maximum, 8192).")
@click.option("--kv-dtype", type=click.Choice(["auto", "bf16", "fp16", "fp8", "fp8_e5m2", "q8_0", "q4_0"]),
              default="auto", show_default=True)
@click.option("--mem-fraction", type=float, default=None,
              help="vLLM gpu_memory_utilization (default 0.9) / SGLang mem_fraction_static (default 0.88).")
@click.option("--swa-ratio", type=float, default=None, help="SGLang --swa-full-tokens-ratio (default 0.8).")
@click.option("--max-seqs", type=int, default=None, help="vLLM max_num_seqs / llama.cpp -np parallel sequences.")
@click.option("--max-batched-tokens", type=int, default=None, help="vLLM max_num_batched_tokens (default 2048, 8192 on 70+ GiB GPUs).")
# Plain types: the library checks the values (the `check` gate calls it directly) and says what
# is wrong in one line; click's own range errors print a usage block.
@click.option("--tp", type=int, default=1, show_default=True,
              help="Tensor-parallel GPUs: a size the engine accepts for the model's head counts.")
@click.option("--text-only", is_flag=True, help="The engine does not load the vision tower.")
@click.option("--weights-gib", type=float, default=None,
              help="Use this weight VRAM (e.g. from the engine's load log) instead of the prediction.")
@click.option("--cudagraph-gib", type=float, default=0.0, show_default=True,
              help="vLLM >= 0.21 subtracts its CUDA-graph estimate; give it from a log.")
@click.option("--ngl", type=int, default=None, help="llama.cpp -ngl: layers on the GPU, the output layer first "
              "(default: all).")
@click.option("--n-cpu-moe", type=int, default=0, help="llama.cpp --n-cpu-moe: experts of the first N layers stay on "
              "the CPU.")
@click.option("--tensor-split", "tensor_split", default=None, metavar="N0,N1,...",
              help="llama.cpp -ts: the layers split over this many GPUs of the --gpu kind, in these proportions "
                   "(1,1: two equal GPUs; llama.cpp's default split is by free memory).")
@click.option("--kv-unified/--no-kv-unified", default=True, show_default=True,
              help="llama.cpp -kvu: the -np sequences share one KV stream (the launch command passes -kvu); "
                   "--no-kv-unified: one stream per sequence, llama.cpp's default without -kvu (ollama).")
@click.option("--solve", "solves", multiple=True, type=click.Choice(["context", "seqs", "ngl"]),
              help="Solve for the largest context, parallel sequences (-np / requests) or -ngl that fits; repeatable.")
@click.option("--explain", is_flag=True, help="Show every term with its mechanism and source.")
@format_option
@click.pass_context
def estimate_cmd(ctx: click.Context, path: str, gpu_name: str, vram: str | None, engine: str | None, context: int | None,
                 kv_dtype: str, mem_fraction: float | None, swa_ratio: float | None, max_seqs: int | None,
                 max_batched_tokens: int | None, tp: int, text_only: bool, weights_gib: float | None,
                 cudagraph_gib: float, ngl: int | None, n_cpu_moe: int, tensor_split: str | None, kv_unified: bool,
                 solves: tuple[str, ...], explain: bool, fmt: str) -> None:
    """Will this checkpoint fit, and how many KV-cache tokens and concurrent sequences will it get?

    Reads headers only (any format inspect reads). Exit 1 when it does not fit, or when the engine
    cannot load it on this GPU (docs/engine-compat.md), so CI can gate on it.

    \b
    Example:
      nvfp4tools estimate ./gemma-4-26B-A4B-it-NVFP4 --gpu rtx4090 --engine vllm --context 8192
      nvfp4tools estimate ./ckpt --gpu rtx3090 --engine sglang --kv-dtype fp8 --mem-fraction 0.91 --swa-ratio 0.05
      nvfp4tools estimate ./ckpt --gpu all --format json
    """
    from nvfp4tools import formats
    from nvfp4tools.errors import UsageError
    from nvfp4tools.estimate import Settings, estimate, gib_to_bytes
    from nvfp4tools.gpus import all_gpus, custom_gpu, detect_local, get_gpu, parse_size

    ts = None
    if tensor_split is not None:
        try:
            ts = tuple(float(v) for v in tensor_split.split(","))
        except ValueError:
            raise UsageError(f"--tensor-split {tensor_split!r} is not a comma list of numbers",
                             hint="e.g. --tensor-split 1,1 (two GPUs, equal shares)") from None
    # llama.cpp's own settings name the engine when --engine does not
    eng = engine or ("llamacpp" if ngl is not None or n_cpu_moe or ts else "vllm")
    s = Settings(engine=eng, context=context, kv_dtype=kv_dtype, mem_fraction=mem_fraction, swa_ratio=swa_ratio,
                 max_seqs=max_seqs, tp=tp, text_only=text_only, max_batched_tokens=max_batched_tokens,
                 kv_unified=kv_unified, weights_bytes_override=gib_to_bytes("--weights-gib", weights_gib),
                 cudagraph_bytes=gib_to_bytes("--cudagraph-gib", cudagraph_gib) or 0,
                 n_gpu_layers=ngl, n_cpu_moe=n_cpu_moe, tensor_split=ts)
    vram_bytes = parse_size(vram, option="--vram", require_unit=True) if vram is not None else None
    if vram_bytes is not None and vram_bytes <= 0:
        raise UsageError(f"--vram {vram!r} must be more than 0 bytes", hint="give the GPU's memory, e.g. 24GiB")
    ckpt = formats.read(path)
    if engine is None and ckpt.format == "gguf":   # the engine that reads GGUF
        import dataclasses

        s = dataclasses.replace(s, engine="llamacpp")
    engine = s.engine
    if gpu_name.strip().lower() == "all" or "," in gpu_name:
        from nvfp4tools.gpus import get_gpus

        rows = []
        for g in get_gpus(gpu_name):
            # one row per GPU: no what-if suggestions (a dozen re-runs each)
            r = estimate(ckpt, custom_gpu(vram_bytes, g) if vram_bytes is not None else g, s, suggest=False).report
            rows.append(_row(g, r, vram_bytes is not None))
        from nvfp4tools._version import __version__
        report = {"schema": "nvfp4tools/estimate-all/v1", "tool_version": __version__, "source": path,
                  "engine": engine, "settings": {k: v for k, v in r["settings"].items()
                                                 if k not in ("max_batched_tokens", "max_seqs")},
                  "rows": rows, "notes": _inversion_notes(engine, rows)}
        emit(report, fmt, _render_all)
        ctx.exit(0 if any(x["fits"] and x["loads"] for x in rows) else 1)
    gpu = detect_local() if gpu_name == "auto" else get_gpu(gpu_name)
    if vram_bytes is not None:
        gpu = custom_gpu(vram_bytes, gpu)
    res = estimate(ckpt, gpu, s)
    if solves:
        from nvfp4tools.estimate_offload import solve

        res.report["solve"] = [solve(ckpt, gpu, s, w) for w in dict.fromkeys(solves)]
    emit(res.report, fmt, lambda r: render_table(r, explain))
    ctx.exit(0 if res.fits and res.loads else 1)


def _gib(n: int | float | None) -> str:
    return "-" if n is None else f"{n / GiB:.2f} GiB"


def render_table(r: dict[str, Any], explain: bool = False) -> str:
    g = r["gpu"]
    k = r["kv"]
    c = r["capacity"]
    st = r["settings"]
    lines = [f"{r['source']} on {g['name']} ({_gib(g['memory_total_bytes'])}, cc {g['compute_capability']}, "
             f"FP4 {g['fp4']}) with {r['engine']}, context {st['context']}, KV {k['dtype']}"
             + (f", TP {st['tp']}" if st["tp"] > 1 else "") + _split_text(st), ""]
    rows = [["weights", human_bytes(r["weights"]["bytes_per_gpu"])]]
    rows.append(["KV bytes/token (full layers)", f"{k['bytes_per_token_full_layers']:,} B over {k['n_full_layers']} layers"])
    if k["n_sliding_layers"]:
        rows.append(["KV bytes/token (sliding layers)",
                     f"{k['bytes_per_token_sliding_layers']:,} B over {k['n_sliding_layers']} layers, window {k['window']}"])
    rows.append(["KV pool", human_bytes(c.get("kv_pool_bytes"))])
    if "full_pool_tokens" in c:
        rows.append(["KV pool tokens (full / SWA)", f"{c['full_pool_tokens']:,} / {c['swa_pool_tokens']:,} (ratio {c['swa_ratio']})"])
    else:
        rows.append(["KV pool tokens", f"{c.get('kv_pool_tokens', 0):,}"])
    if "kv_pool_tokens_legacy" in c:
        rows.append(["vLLM 0.19-era 'GPU KV cache size'", f"{c['kv_pool_tokens_legacy']:,} tokens"])
    rows.append([f"max concurrency at {st['context']}", f"{c.get('max_concurrency', 0)}x"])
    rows.append(["fits", ("yes" if r["fits"] else "NO") + f" (margin {_gib(r['margin_bytes'])})"])
    ec = r["engine_compat"]
    errors = [f for f in ec["findings"] if f["severity"] == "error"]
    rows.append([f"{r['engine']} loads it here", "yes" if ec["loads"] else
                 f"NO: {errors[0]['code']}" + (f" (+{len(errors) - 1} more)" if len(errors) > 1 else "")])
    rows.append(["KV the engine must hold", human_bytes(c.get("required_kv_bytes", 0))])
    rows.append(["decode ceiling (batch 1)", f"{r['decode']['tokens_per_s_ceiling']} tokens/s "
                 f"({human_bytes(r['decode']['bytes_per_token_per_gpu'])} read per token)"])
    lines.append(tabulate(rows, tablefmt="plain"))
    if not r["fits"]:
        lines += ["", f"does not fit: short by {_gib(r['shortfall_bytes'])}"]
        for x in r.get("suggestions", []):
            outcome = (f"fits, margin {_gib(x['margin_bytes'])}" if x["fits"]
                       else f"still short by {_gib(-x['margin_bytes'])}")
            lines.append(f"  {x['change']}: {outcome} (weights {_gib(x['weights_bytes_per_gpu'])}/GPU, "
                         f"{x['kv_pool_tokens']:,} KV tokens, {x['max_concurrency']}x)")
    if explain:
        lines.append("")
        width = max(len(t["name"]) for t in r["weights"]["terms"] + r["memory"]["terms"])
        for title, terms in (("weights:", r["weights"]["terms"]), (f"{r['engine']} memory:", r["memory"]["terms"])):
            lines.append(title)
            for t in terms:
                lines.append(f"  {t['name']:<{width}} {_gib(t['bytes']):>11}  {t['mechanism']}"
                             + (f" [{t['source']}]" if t["source"] else ""))
    off = r.get("offload")
    if off and not off["all_on_gpu"]:
        lines.insert(3, f"offload: -ngl {off['n_gpu_layers']} ({off['layers_on_gpu']}/{off['n_layers']} layers"
                        + (" + output" if off["output_on_gpu"] else "") + " on the GPU"
                        + (f", --n-cpu-moe {off['n_cpu_moe']}" if off["n_cpu_moe"] else "")
                        + f"); GPU weights {_gib(off['gpu_weight_bytes'])}, system RAM {_gib(off['system_ram_bytes'])}")
    for x in r.get("solve", []):
        v = "none fits" if x["value"] is None else f"{x['value']:,}"
        lines.append(f"solve {x['what']}: {v} ({x['meaning']})")
    if r.get("launch"):
        lines += ["", "launch (the settings above):", "  " + r["launch"]["command"]]
        lines += [f"  ({n})" for n in r["launch"]["notes"]]
    lines += _wrapped_notes(r["notes"])
    return "\n".join(lines)


WIDTH = 100   # notes and the --gpu all table fit in 100 columns


def _wrapped_notes(notes: list[str]) -> list[str]:
    import textwrap

    out: list[str] = []
    for n in notes:
        out += textwrap.wrap(n, WIDTH, initial_indent="note: ", subsequent_indent="      ",
                             break_long_words=False, break_on_hyphens=False)
    return out


def _row(g: Any, r: dict[str, Any], custom_vram: bool) -> dict[str, Any]:
    c = r["capacity"]
    st = r["settings"]
    unverified = [u for u in g.unverified if not (u == "memory" and custom_vram)]
    return {"gpu": g.key, "memory_total_bytes": r["gpu"]["memory_total_bytes"], "fp4": g.fp4,
            "fits": r["fits"], "loads": r["engine_compat"]["loads"], "margin_bytes": r["margin_bytes"],
            "shortfall_bytes": r["shortfall_bytes"], "weights_bytes": r["weights"]["bytes_per_gpu"],
            "kv_pool_bytes": c.get("kv_pool_bytes", 0), "kv_pool_tokens": c.get("kv_pool_tokens", 0),
            "max_concurrency": c.get("max_concurrency", 0),
            "decode_tokens_per_s_ceiling": r["decode"]["tokens_per_s_ceiling"],
            "unverified": unverified,
            # vLLM's defaults depend on the GPU's memory: they explain rows that look inverted
            "max_batched_tokens": st.get("max_batched_tokens"), "max_seqs": st.get("max_seqs"),
            "blocks_per_request": c.get("blocks_per_request"),
            "profile_bytes": sum(t["bytes"] for t in r["memory"]["terms"]
                                 if t["name"] in ("activation_forward", "activation_sampler"))}


def _inversion_notes(engine: str, rows: list[dict[str, Any]]) -> list[str]:
    """One note when a GPU with more memory shows fewer KV tokens than one with less, and vLLM's
    GPU-dependent defaults differ between them (max_num_batched_tokens 8192 / max_num_seqs 1024
    at 70 GiB or more, 2048 / 256 below): the larger profile run takes memory, and a sliding-window
    group holds window - 1 + max_num_batched_tokens tokens per request."""
    if engine != "vllm":
        return []
    low: dict[str, dict[str, Any]] = {}
    for a in rows:
        for b in rows:
            if (a["memory_total_bytes"] > b["memory_total_bytes"] and a["kv_pool_tokens"] < b["kv_pool_tokens"]
                    and (a["max_batched_tokens"], a["max_seqs"]) != (b["max_batched_tokens"], b["max_seqs"])):
                if a["gpu"] not in low or b["kv_pool_tokens"] > low[a["gpu"]]["kv_pool_tokens"]:
                    low[a["gpu"]] = b
    if not low:
        return []
    a = next(x for x in rows if x["gpu"] in low)
    b = low[a["gpu"]]
    more = f"{(a['profile_bytes'] - b['profile_bytes']) / GiB:.2f} GiB"
    blocks = (f"; a request needs {a['blocks_per_request']:,} KV blocks on {a['gpu']} against "
              f"{b['blocks_per_request']:,} on {b['gpu']}" if a.get("blocks_per_request") and b.get("blocks_per_request")
              else "")
    return [f"KV tokens look inverted: {', '.join(low)} {'shows' if len(low) == 1 else 'show'} fewer than {b['gpu']} with more memory because vLLM's "
            f"defaults follow GPU memory (max_num_batched_tokens {a['max_batched_tokens']} and max_num_seqs "
            f"{a['max_seqs']} on {a['gpu']}, {b['max_batched_tokens']} and {b['max_seqs']} on {b['gpu']}; "
            f"8192 / 1024 at 70 GiB or more): the profile run there takes {more} more{blocks} "
            "(sliding-window groups hold window - 1 + max_num_batched_tokens tokens); pass --max-batched-tokens "
            "and --max-seqs to compare like with like"]


def _split_text(st: dict[str, Any]) -> str:
    ts = st.get("tensor_split")
    return f", -ts {','.join(f'{v:g}' for v in ts)} ({len(ts)} GPUs)" if ts else ""


def _render_all(r: dict[str, Any]) -> str:
    st = r["settings"]
    head = (f"{r['source']}: {r['engine']}, context {st['context']}, KV {st['kv_dtype']}"
            + (f", TP {st['tp']}" if st.get("tp", 1) > 1 else "") + _split_text(st))
    rows = []
    for x in r["rows"]:
        mark = {u: "*" for u in x.get("unverified", [])}
        rows.append([x["gpu"], f"{x['memory_total_bytes'] / GiB:.2f}{mark.get('memory', '')}", x["fp4"],
                     "yes" if x["fits"] else "no", "yes" if x["loads"] else "no",
                     f"{x['margin_bytes'] / GiB:.2f}", f"{x['weights_bytes'] / GiB:.2f}",
                     f"{x['kv_pool_tokens']:,}", f"{x['max_concurrency']:.2f}x",
                     f"{x['decode_tokens_per_s_ceiling']:.0f}{mark.get('bandwidth', '')}"])
    lines = [head, "",
             tabulate(rows, headers=["gpu", "GiB", "fp4", "fits", "loads", "margin", "weights", "KV tokens",
                                     "conc.", "tok/s"], tablefmt="simple", disable_numparse=True),
             "", "GiB: memory the driver reports; margin and weights in GiB per GPU; tok/s: decode ceiling at batch 1"
             if not st.get("tensor_split") else
             "GiB: memory the driver reports per GPU; weights: all GPUs together; margin: the smallest GPU's"]
    if any(x.get("unverified") for x in r["rows"]):
        lines.append("*: the GPU table marks this figure UNVERIFIED (nvfp4tools gpus --format json gives its source)")
    lines += _wrapped_notes(r.get("notes", []))
    return "\n".join(lines)


@click.command("gpus")
@format_option
def gpus_cmd(fmt: str) -> None:
    """List the GPU table estimate uses (memory the driver reports, bandwidth, FP4/FP8 support, sources).

    \b
    Example:
      nvfp4tools gpus --format json
    """
    from nvfp4tools._version import __version__
    from nvfp4tools.gpus import all_gpus, context_overhead_bytes, table_rows

    ctx = {g.key: context_overhead_bytes(g) for g in all_gpus()}
    report = {"schema": "nvfp4tools/gpus/v1", "tool_version": __version__,
              "gpus": [dict(g, context_bytes=ctx[g["key"]]) for g in table_rows()]}

    def render(r: dict[str, Any]) -> str:
        rows = [[g["key"], g["name"], _gib(g["memory_total_bytes"]), f"{g['bandwidth_bytes_per_s'] / 1e9:.0f}",
                 g["compute_capability"], g["fp4"], "yes" if g["fp8_tensor_cores"] else "no", g["sms"],
                 _gib(g["context_bytes"])] for g in r["gpus"]]
        return tabulate(rows, headers=["key", "name", "memory", "GB/s", "cc", "fp4", "fp8", "SMs",
                                       "context"],
                        tablefmt="simple", disable_numparse=True) + "\n\nsources: nvfp4tools gpus --format json"
    emit(report, fmt, render)
