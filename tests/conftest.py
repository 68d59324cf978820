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


@pytest.fixture(scope="session")
def oracles(tmp_path_factory):
    """Tiny Gemma 4 checkpoints written by transformers, nvidia-modelopt and compressed-tensors."""
    missing = missing_oracles()
    if missing:
        pytest.skip(f"interop oracles not installed ({', '.join(missing)}): pip install -e '.[oracles]'")
    import build  # tests/oracles/build.py

    return build.build_all(str(tmp_path_factory.mktemp("oracles")))


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory):
    """Factory: synth(name, **kwargs) -> path, cached per session."""
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
