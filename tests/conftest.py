"""Shared fixtures: synthetic checkpoints (always) and real upstream-tool checkpoints (interop)."""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "oracles"))

ORACLE_MODULES = ("torch", "transformers", "modelopt", "compressed_tensors")


def missing_oracles() -> list[str]:
    return [m for m in ORACLE_MODULES if importlib.util.find_spec(m) is None]


@pytest.fixture(scope="package")
def oracles(tmp_path_factory):
    """Tiny Gemma 4 checkpoints written by transformers, nvidia-modelopt and compressed-tensors."""
    missing = missing_oracles()
    if missing:
        pytest.skip(f"interop oracles not installed ({', '.join(missing)}): pip install -e '.[oracles]'")
    import build  # tests/oracles/build.py

    return build.build_all(str(tmp_path_factory.mktemp("oracles")))


LLAMA_CPP = os.environ.get("NVFP4TOOLS_LLAMA_CPP") or os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".cache", "llama.cpp")


@pytest.fixture(scope="package")
def llama_cpp_ggufs(oracles, tmp_path_factory):
    """GGUF files written by llama.cpp's own converter from the tiny BF16 and ModelOpt NVFP4 models."""
    if not os.path.isfile(os.path.join(LLAMA_CPP, "convert_hf_to_gguf.py")):
        pytest.skip(f"llama.cpp converter not found in {LLAMA_CPP} (make setup-test fetches it from the "
                    "llama-cpp-python sdist; or set NVFP4TOOLS_LLAMA_CPP)")
    import build

    d = tmp_path_factory.mktemp("llamacpp")
    build.add_tokenizer([oracles["bf16"], oracles["modelopt_nvfp4"]])
    out = {"bf16": str(d / "bf16.gguf"), "nvfp4": str(d / "nvfp4.gguf")}
    build.llama_cpp_convert(LLAMA_CPP, oracles["bf16"], out["bf16"], "bf16")
    build.llama_cpp_convert(LLAMA_CPP, oracles["modelopt_nvfp4"], out["nvfp4"])
    return out


@pytest.fixture(scope="package")
def synth_dir(tmp_path_factory):
    """Factory: synth(name, **kwargs) -> path, cached for the whole test run."""
    from nvfp4tools.synth import synthesize

    cache: dict[tuple, str] = {}
    base = tmp_path_factory.mktemp("synth")

    def make(**kw) -> str:
        key = tuple(sorted(kw.items()))
        if key not in cache:
            path = str(base / f"c{len(cache)}")
            synthesize(path, **kw)
            cache[key] = path
        return cache[key]

    return make


@pytest.fixture
def run_cli():
    """Invoke the CLI in-process; returns click's Result (stdout and stderr kept apart)."""
    from click.testing import CliRunner

    from nvfp4tools.cli import cli

    def run(*args: str):
        try:
            runner = CliRunner(mix_stderr=False)  # click < 8.2
        except TypeError:
            runner = CliRunner()
        return runner.invoke(cli, list(args), catch_exceptions=False)

    return run


@pytest.fixture(scope="package")
def family_oracle(tmp_path_factory):
    """Factory: family_oracle(family, kind) -> path of a real upstream checkpoint of a decoder family.

    FAMILY in families.FAMILIES (llama, mistral, mixtral, qwen2, qwen3, qwen3_moe, deepseek_v3, gpt_oss,
    phi3); KIND in families.KINDS: "bf16" (transformers), "modelopt_nvfp4" (nvidia-modelopt export),
    "bf16.gguf" / "nvfp4.gguf" (llama.cpp's own converter) or "q4_0.gguf" / "q8_0.gguf" / "q4_k_m.gguf"
    (llama.cpp's llama_model_quantize of bf16.gguf). Built lazily, shared by the whole test run. Skips when
    the oracle modules or (for GGUF) the llama.cpp converter or llama-cpp-python are missing; a (family,
    kind) the upstream tool cannot make raises families.UpstreamLimitation."""
    missing = missing_oracles()
    if missing:
        pytest.skip(f"interop oracles not installed ({', '.join(missing)}): pip install -e '.[oracles]'")
    import families  # tests/oracles/families.py

    base = tmp_path_factory.mktemp("families")

    def get(family: str, kind: str) -> str:
        if kind.endswith(".gguf") and not os.path.isfile(os.path.join(families.LLAMA_CPP, "convert_hf_to_gguf.py")):
            pytest.skip(f"llama.cpp converter not found in {families.LLAMA_CPP} (make setup-test fetches it from "
                        "the llama-cpp-python sdist; or set NVFP4TOOLS_LLAMA_CPP)")
        if kind in families.QUANTIZED_GGUF and importlib.util.find_spec("llama_cpp") is None:
            pytest.skip("llama-cpp-python not installed (llama_model_quantize writes the quantized GGUFs)")
        return families.build(family, kind, str(base))

    return get


@pytest.fixture
def empty_hf_cache(monkeypatch, tmp_path):
    """An empty local Hugging Face cache, online, and no Hub header read kept from another test."""
    from nvfp4tools.formats import hub as nv_hub

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    nv_hub.fetch.cache_clear()
    yield str(cache)
    nv_hub.fetch.cache_clear()

