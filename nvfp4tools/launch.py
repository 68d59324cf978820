"""The launch command that realises an ``estimate``: the engine's own flags set to the values the
estimate assumed, so the server you start is the one that was sized (stdlib only).

Every flag spelling and accepted value comes from the engine's argument definitions, cited per
flag in :data:`FLAGS`:

- vLLM 0.34.0 (wheel, commit 62d4bc3c7): ``vllm/engine/arg_utils.py`` ``EngineArgs.add_cli_args``,
  the model as ``vllm serve``'s positional ``model_tag`` (``vllm/entrypoints/cli/serve.py``), cache
  dtypes from ``vllm/config/cache.py`` ``CacheDType``.
- SGLang 0.5.23 (wheel): flag names are ``"--" + field.replace("_", "-")`` plus ``Arg(aliases=...)``
  (``sglang/srt/arg_groups/arg_utils.py`` ``_field_to_cli_name``, ``add_cli_args_from_dataclass``)
  over the fields in ``sglang/srt/arg_groups/fields/*.py``; ``python -m sglang.launch_server``.
- llama.cpp at 0c1e57098 (the copy llama-cpp-python 0.3.36 vendors): ``common/arg.cpp``
  ``common_params_parser_init``; ``llama-server``.

Neither vLLM's nor SGLang's parser can be imported here without their GPU dependencies, so the
tests check the commands against these tables (and against the engines' source files when a copy
is on disk); llama.cpp's arguments are checked against the same table.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Any

LLAMA_PAD = 256   # llama.cpp pads n_ctx to 256 cells (llama-context.cpp: cparams.n_ctx = GGML_PAD(n_ctx, 256))


@dataclass(frozen=True)
class Flag:
    """One command-line option: its spellings (the first is the one printed), the values it takes
    (None: any of ``kind``), and where the engine defines it."""
    names: tuple[str, ...]
    kind: str                          # "int" | "float" | "str" | "choice" | "switch"
    source: str
    choices: tuple[str, ...] | None = None


_V = "vllm 0.34.0 (62d4bc3c7) vllm/engine/arg_utils.py EngineArgs.add_cli_args"
_S = "sglang 0.5.23 sglang/srt/arg_groups/fields"
_L = "llama.cpp 0c1e57098 common/arg.cpp"

# The values vLLM's --kv-cache-dtype takes for the cache types estimate models (config/cache.py
# CacheDType, 22 values in all); SGLang's choices list (fields/model.py kv_cache_dtype); llama.cpp's
# kv_cache_types (common/arg.cpp L304-314, matched by ggml_type_name).
VLLM_KV = ("auto", "float16", "bfloat16", "fp8", "fp8_e4m3", "fp8_e5m2")
SGLANG_KV = ("auto", "fp8_e5m2", "fp8_e4m3", "mxfp8", "bf16", "bfloat16", "nvfp4", "fp4_mx_block16")
LLAMA_KV = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")

FLAGS: dict[str, dict[str, Flag]] = {
    "vllm": {
        "max_model_len": Flag(("--max-model-len",), "int", f"{_V} L998 (model_group)"),
        "gpu_memory_utilization": Flag(("--gpu-memory-utilization", "--device-memory-utilization"), "float",
                                       f"{_V} L1404 (cache_group)"),
        "kv_cache_dtype": Flag(("--kv-cache-dtype",), "choice", f"{_V} L1416; vllm/config/cache.py CacheDType", VLLM_KV),
        "max_num_seqs": Flag(("--max-num-seqs",), "int", f"{_V} L1773 (scheduler_group)"),
        "max_num_batched_tokens": Flag(("--max-num-batched-tokens",), "int", f"{_V} L1759 (scheduler_group)"),
        "tensor_parallel_size": Flag(("--tensor-parallel-size", "-tp"), "int", f"{_V} L1224 (parallel_group)"),
        "language_model_only": Flag(("--language-model-only",), "switch", f"{_V} L1516 (multimodal_group)"),
    },
    "sglang": {
        "model_path": Flag(("--model-path", "--model"), "str", f"{_S}/model.py model_path (alias --model)"),
        "mem_fraction_static": Flag(("--mem-fraction-static",), "float", f"{_S}/schedule.py mem_fraction_static"),
        "swa_full_tokens_ratio": Flag(("--swa-full-tokens-ratio",), "float", f"{_S}/schedule.py swa_full_tokens_ratio"),
        "context_length": Flag(("--context-length",), "int", f"{_S}/model.py context_length"),
        "kv_cache_dtype": Flag(("--kv-cache-dtype",), "choice", f"{_S}/model.py kv_cache_dtype (choices)", SGLANG_KV),
        "tp_size": Flag(("--tp-size", "--tensor-parallel-size"), "int",
                        f"{_S}/parallel.py tp_size (alias --tensor-parallel-size)"),
        "chunked_prefill_size": Flag(("--chunked-prefill-size",), "int", f"{_S}/schedule.py chunked_prefill_size"),
        "language_model_only": Flag(("--language-model-only",), "switch", f"{_S}/disagg.py language_model_only"),
    },
    "llamacpp": {
        "model": Flag(("-m", "--model"), "str", f"{_L} L3035"),
        "ctx_size": Flag(("-c", "--ctx-size"), "int", f"{_L} L1639"),
        "parallel": Flag(("-np", "--parallel"), "int", f"{_L} L2544 (llama-server: number of server slots)"),
        "kv_unified": Flag(("-kvu", "--kv-unified"), "switch", f"{_L} L1724"),
        "gpu_layers": Flag(("-ngl", "--gpu-layers", "--n-gpu-layers"), "ngl", f"{_L} L2789 (N, 'auto' or 'all')"),
        "n_cpu_moe": Flag(("-ncmoe", "--n-cpu-moe"), "int", f"{_L} L2767"),
        "tensor_split": Flag(("-ts", "--tensor-split"), "proportions", f"{_L} L2831 (N0,N1,N2,...)"),
        "cache_type_k": Flag(("-ctk", "--cache-type-k"), "choice", f"{_L} L2437; kv_cache_types L304", LLAMA_KV),
        "cache_type_v": Flag(("-ctv", "--cache-type-v"), "choice", f"{_L} L2450; kv_cache_types L304", LLAMA_KV),
        "flash_attn": Flag(("-fa", "--flash-attn"), "choice", f"{_L} L1754", ("on", "off", "auto")),
        "ubatch_size": Flag(("-ub", "--ubatch-size"), "int", f"{_L} L1676"),
    },
}

PROGRAM = {"vllm": ["vllm", "serve"], "sglang": ["python", "-m", "sglang.launch_server"], "llamacpp": ["llama-server"]}

# estimate's cache-type names -> each engine's spelling (None: the engine has no spelling for it)
_KV_NAME = {
    "vllm": {"bf16": "bfloat16", "fp16": "float16", "fp8": "fp8", "fp8_e4m3": "fp8_e4m3", "fp8_e5m2": "fp8_e5m2"},
    # SGLang has no plain "fp8": fp8_e4m3 is what vLLM's "fp8" means; no float16 choice ("auto" is the model dtype)
    "sglang": {"bf16": "bf16", "fp16": None, "fp8": "fp8_e4m3", "fp8_e4m3": "fp8_e4m3", "fp8_e5m2": "fp8_e5m2"},
    "llamacpp": {"fp16": "f16", "bf16": "bf16", "fp32": "f32", "q8_0": "q8_0", "q4_0": "q4_0"},
}


def _num(x: Any) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def launch_command(report: dict[str, Any], kv_dtype_requested: str, model: str | None = None) -> dict[str, Any]:
    """The command for REPORT's engine with the settings the estimate used.

    KV_DTYPE_REQUESTED is the user's ``--kv-dtype`` (``auto`` is passed on as ``auto`` to vLLM and
    SGLang, whose "auto" is the model dtype the estimate assumed). MODEL defaults to the report's
    source; for llama.cpp and a checkpoint that is not a GGUF it is the file ``nvfp4tools convert
    --to gguf`` would write, with a note."""
    engine = report["engine"]
    st = report["settings"]
    kv = report["kv"]["dtype"]
    notes: list[str] = []
    model = model or report["source"]
    parts: list[tuple[str, Any]] = []       # (setting key in FLAGS[engine], value or True for a switch)
    if engine == "vllm":
        parts += [("max_model_len", st["context"]), ("gpu_memory_utilization", st["mem_fraction"]),
                  ("kv_cache_dtype", "auto" if kv_dtype_requested == "auto" else _KV_NAME["vllm"][kv]),
                  ("max_num_seqs", st["max_seqs"]), ("max_num_batched_tokens", st["max_batched_tokens"]),
                  ("tensor_parallel_size", st["tp"])]
        if st.get("text_only"):
            parts.append(("language_model_only", True))
        argv = PROGRAM["vllm"] + [model]
    elif engine == "sglang":
        name = "auto" if kv_dtype_requested == "auto" else _KV_NAME["sglang"].get(kv)
        if name is None:
            name = "auto"
            notes.append(f"SGLang has no --kv-cache-dtype spelling for {kv}; 'auto' caches in the model dtype")
        parts += [("model_path", model), ("mem_fraction_static", st["mem_fraction"]),
                  ("context_length", st["context"]), ("kv_cache_dtype", name), ("tp_size", st["tp"])]
        if st.get("swa_ratio") is not None:
            parts.append(("swa_full_tokens_ratio", st["swa_ratio"]))
        if st.get("text_only"):
            parts.append(("language_model_only", True))
        argv = list(PROGRAM["sglang"])
    else:
        if report.get("format") != "gguf":
            gguf = model.rstrip("/") + ".gguf"
            notes.append(f"llama.cpp reads GGUF: write it first with `nvfp4tools convert {model} {gguf} --to gguf`")
            model = gguf
        n_seq = st["n_seq"]
        # llama-server's -c is the whole cache (n_ctx); with -kvu every slot may use all of it,
        # which is the unified cache the estimate sizes (llama-context.cpp: kv_unified ->
        # n_ctx_seq = n_ctx; without it each slot gets n_ctx / n_seq and its own SWA cells)
        n_ctx = -(-st["context"] * n_seq // LLAMA_PAD) * LLAMA_PAD
        ctype = _KV_NAME["llamacpp"][kv]
        parts += [("model", model), ("ctx_size", n_ctx), ("parallel", n_seq)]
        if n_seq > 1 and st.get("kv_unified", True):
            parts.append(("kv_unified", True))
        off = report.get("offload") or {}
        ngl = off.get("n_gpu_layers")
        parts.append(("gpu_layers", "all" if ngl is None or off.get("all_on_gpu") else ngl))
        if off.get("n_cpu_moe"):
            parts.append(("n_cpu_moe", off["n_cpu_moe"]))
        if st.get("tensor_split"):
            parts.append(("tensor_split", ",".join(f"{v:g}" for v in st["tensor_split"])))
        parts += [("cache_type_k", ctype), ("cache_type_v", ctype),
                  # a quantized V cache needs flash attention (llama-context.cpp refuses it otherwise)
                  ("flash_attn", "on" if kv in ("q8_0", "q4_0") else "auto"), ("ubatch_size", st["ubatch"])]
        argv = list(PROGRAM["llamacpp"])
    flags = []
    for key, value in parts:
        f = FLAGS[engine][key]
        argv.append(f.names[0])
        if f.kind != "switch":
            argv.append(_num(value))
        flags.append({"flag": f.names[0], "value": None if f.kind == "switch" else _num(value), "setting": key,
                      "source": f.source})
    return {"engine": engine, "argv": argv, "command": shlex.join(argv), "flags": flags, "notes": notes}


def parse_args(engine: str, argv: list[str]) -> dict[str, Any]:
    """Parse ARGV (a command from :func:`launch_command`) back against :data:`FLAGS`: every option
    must be a spelling the engine defines, take a value of its kind (a listed choice where it has
    choices), and appear once. Returns {setting: value}; raises ValueError naming what is wrong."""
    prog = PROGRAM[engine]
    if argv[:len(prog)] != prog:
        raise ValueError(f"expected {' '.join(prog)}, got {' '.join(argv[:len(prog)])}")
    rest = argv[len(prog):]
    out: dict[str, Any] = {}
    if engine == "vllm":
        if not rest or rest[0].startswith("-"):
            raise ValueError("vllm serve takes the model as its first (positional) argument")
        out["model"], rest = rest[0], rest[1:]
    by_name = {n: (k, f) for k, f in FLAGS[engine].items() for n in f.names}
    i = 0
    while i < len(rest):
        tok = rest[i]
        if tok not in by_name:
            raise ValueError(f"{tok!r} is not a {engine} option in the cited table")
        key, f = by_name[tok]
        if key in out:
            raise ValueError(f"{tok} given twice")
        if f.kind == "switch":
            out[key] = True
            i += 1
            continue
        if i + 1 >= len(rest):
            raise ValueError(f"{tok} needs a value")
        v = rest[i + 1]
        if f.kind == "int":
            out[key] = int(v)
        elif f.kind == "float":
            out[key] = float(v)
        elif f.kind == "ngl":
            out[key] = v if v in ("auto", "all") else int(v)
        elif f.kind == "proportions":
            # common/arg.cpp -ts: split on [,/]+, std::stof each, fewer than llama_max_devices() (16)
            vals = re.split(r"[,/]+", v)
            if len(vals) >= 16:
                raise ValueError(f"{tok} gives {len(vals)} proportions; llama.cpp takes at most 15")
            out[key] = tuple(float(x) for x in vals)
        elif f.kind == "choice":
            if v not in (f.choices or ()):
                raise ValueError(f"{tok} {v!r} is not one of {', '.join(f.choices or ())}")
            out[key] = v
        else:
            out[key] = v
        i += 2
    return out
