"""estimate's launch commands: parsed back against the cited flag tables (nvfp4tools/launch.py),
and those tables against the engines' own source files where a copy is on disk.

vLLM's and SGLang's argument parsers need their GPU dependencies (torch builds, CUDA kernels) to
import, and neither engine is installed here, so their commands are checked against the table of
spellings read from vllm/engine/arg_utils.py (0.34.0) and sglang/srt/arg_groups/fields (0.5.23).
"""

from __future__ import annotations

import os
import re
import shlex

import pytest

from nvfp4tools.launch import FLAGS, parse_args

from tests.helpers import gemma4_26b, report



@pytest.fixture(scope="module")
def g26(tmp_path_factory):
    return gemma4_26b(tmp_path_factory, "all-linear")


def _launch(ck, gpu="rtx4090", **kw):
    r = report(ck, gpu, **kw)
    lc = r["launch"]
    assert shlex.split(lc["command"]) == lc["argv"]
    return r, lc, parse_args(r["engine"], lc["argv"])


def test_vllm_command_carries_every_setting(g26):
    r, lc, a = _launch(g26, engine="vllm", context=32768, kv_dtype="fp8", mem_fraction=0.85, max_seqs=64)
    assert lc["argv"][:3] == ["vllm", "serve", r["source"]]
    assert a == {"model": r["source"], "max_model_len": 32768, "gpu_memory_utilization": 0.85,
                 "kv_cache_dtype": "fp8", "max_num_seqs": 64, "max_num_batched_tokens": 2048,
                 "tensor_parallel_size": 1}
    # the GPU-dependent defaults the estimate assumed are written out, so the server matches it
    _, _, h = _launch(g26, gpu="h100-sxm", engine="vllm")
    assert (h["max_num_batched_tokens"], h["max_num_seqs"], h["kv_cache_dtype"]) == (8192, 1024, "auto")
    _, _, t = _launch(g26, engine="vllm", text_only=True, tp=2, kv_dtype="bf16")
    assert t["language_model_only"] is True and t["tensor_parallel_size"] == 2 and t["kv_cache_dtype"] == "bfloat16"


def test_sglang_command(g26):
    r, lc, a = _launch(g26, gpu="rtx3090", engine="sglang", kv_dtype="fp8", mem_fraction=0.91, swa_ratio=0.05)
    assert lc["argv"][:3] == ["python", "-m", "sglang.launch_server"]
    # SGLang has no plain "fp8" choice: fp8_e4m3 is the format vLLM's "fp8" and estimate's fp8 mean
    assert a == {"model_path": r["source"], "mem_fraction_static": 0.91, "context_length": 8192,
                 "kv_cache_dtype": "fp8_e4m3", "tp_size": 1, "swa_full_tokens_ratio": 0.05}
    _, lc2, _ = _launch(g26, engine="sglang", kv_dtype="fp16")
    assert any("no --kv-cache-dtype spelling" in n for n in lc2["notes"])


def test_llamacpp_command_is_the_unified_cache_estimated(g26):
    r, lc, a = _launch(g26, engine="llamacpp", context=4000, max_seqs=3, kv_dtype="q8_0")
    # -c is llama-server's whole cache: 3 x 4000 padded to 256 cells, shared (-kvu) as estimated
    assert a["ctx_size"] == r["capacity"]["n_ctx"] == 12032 and a["parallel"] == 3 and a["kv_unified"] is True
    assert (a["cache_type_k"], a["cache_type_v"], a["flash_attn"], a["gpu_layers"]) == ("q8_0", "q8_0", "on", "all")
    assert a["model"].endswith(".gguf") and lc["notes"]      # safetensors in: convert first, said so
    _, _, one = _launch(g26, engine="llamacpp")
    assert "kv_unified" not in one and one["cache_type_k"] == "f16" and one["flash_attn"] == "auto"


def test_parse_args_refuses_what_the_engines_refuse():
    with pytest.raises(ValueError, match="not a vllm option"):
        parse_args("vllm", ["vllm", "serve", "m", "--gpu-mem-util", "0.9"])
    with pytest.raises(ValueError, match="not one of"):
        parse_args("sglang", ["python", "-m", "sglang.launch_server", "--kv-cache-dtype", "fp8"])
    with pytest.raises(ValueError, match="not one of"):
        parse_args("llamacpp", ["llama-server", "-ctk", "fp16"])
    with pytest.raises(ValueError, match="positional"):
        parse_args("vllm", ["vllm", "serve", "--max-model-len", "8"])


# -- the tables against the engines' source files, where a copy is on disk ---------------------

def _first(*paths):
    for p in paths:
        if p and os.path.exists(p):
            return p
    return None


LLAMA_ARG = _first(os.environ.get("NVFP4TOOLS_LLAMA_ARG_CPP"),
                   "/tmp/llama_cpp_python-0.3.36/vendor/llama.cpp/common/arg.cpp",
                   os.path.join(os.path.dirname(__file__), "..", ".cache", "llama.cpp", "common", "arg.cpp"))
VLLM_ARGS = _first(os.environ.get("NVFP4TOOLS_VLLM_ARG_UTILS"), "/tmp/vllmwheel/src/vllm/engine/arg_utils.py")
SGLANG_FIELDS = _first(os.environ.get("NVFP4TOOLS_SGLANG_FIELDS"), "/tmp/sgl_pkg/src/sglang/srt/arg_groups/fields")


@pytest.mark.skipif(LLAMA_ARG is None, reason="no llama.cpp common/arg.cpp on disk (set NVFP4TOOLS_LLAMA_ARG_CPP)")
def test_llamacpp_table_matches_arg_cpp():
    src = open(LLAMA_ARG).read()
    defined = set()
    for m in re.finditer(r"common_arg\(\s*\{([^}]*)\}", src):
        defined.update(re.findall(r'"(-[^"]+)"', m.group(1)))
    for f in FLAGS["llamacpp"].values():
        assert set(f.names) <= defined, f.names
    kv = re.search(r"kv_cache_types = \{(.*?)\};", src, re.S).group(1)
    assert [t.lower() for t in re.findall(r"GGML_TYPE_(\w+)", kv)] == list(FLAGS["llamacpp"]["cache_type_k"].choices)


@pytest.mark.skipif(VLLM_ARGS is None, reason="no vllm/engine/arg_utils.py on disk (set NVFP4TOOLS_VLLM_ARG_UTILS)")
def test_vllm_table_matches_arg_utils():
    src = open(VLLM_ARGS).read()
    for f in FLAGS["vllm"].values():
        for n in f.names:
            assert f'"{n}"' in src, n


@pytest.mark.skipif(SGLANG_FIELDS is None, reason="no sglang arg_groups/fields on disk (set NVFP4TOOLS_SGLANG_FIELDS)")
def test_sglang_table_matches_fields():
    src = "".join(open(os.path.join(SGLANG_FIELDS, n)).read() for n in os.listdir(SGLANG_FIELDS) if n.endswith(".py"))
    for f in FLAGS["sglang"].values():
        field = f.names[0][2:].replace("-", "_")     # _field_to_cli_name inverted
        assert re.search(rf"^\s+{field}: A\[", src, re.M), field
        for alias in f.names[1:]:
            assert f'"{alias}"' in src, alias
    choices = re.search(r"kv_cache_dtype: A\[.*?choices=\[(.*?)\]", src, re.S).group(1)
    assert tuple(re.findall(r'"([^"]+)"', choices)) == FLAGS["sglang"]["kv_cache_dtype"].choices
