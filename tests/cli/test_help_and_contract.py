"""CLI contract: help with examples, version, JSON schema, exit codes, no heavy imports."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from nvfp4tools.cli import _LAZY

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("cmd", sorted(_LAZY))
def test_every_command_has_help_with_example(run_cli, cmd):
    r = run_cli(cmd, "--help")
    assert r.exit_code == 0
    assert "Example:" in r.stdout, f"{cmd} --help has no example"
    assert f"nvfp4tools {cmd}" in r.stdout


def test_every_command_has_a_docs_page(run_cli):
    for cmd in _LAZY:
        assert os.path.isfile(os.path.join(ROOT, "docs", "commands", f"{cmd}.md")), cmd


def test_version(run_cli):
    from nvfp4tools import __version__

    r = run_cli("--version")
    assert r.exit_code == 0 and __version__ in r.stdout


def test_usage_error_exit_2(run_cli):
    assert run_cli("inspect").exit_code == 2
    assert run_cli("nonsense").exit_code == 2
    assert run_cli("inspect", ".", "--format", "xml").exit_code == 2


def test_json_validates_against_schema(synth_dir, run_cli):
    jsonschema = pytest.importorskip("jsonschema")
    with open(os.path.join(ROOT, "docs", "schema", "inspect.json")) as fh:
        schema = json.load(fh)
    r = run_cli("inspect", synth_dir(fmt="modelopt", recipe="all-linear"), "--format", "json", "--tensors")
    jsonschema.validate(json.loads(r.stdout), schema)


def test_json_is_stable_across_runs(synth_dir, run_cli):
    p = synth_dir(fmt="compressed-tensors", recipe="experts-only")
    assert run_cli("inspect", p, "--format", "json").stdout == run_cli("inspect", p, "--format", "json").stdout


def test_inspect_never_imports_numpy_or_torch(synth_dir):
    p = synth_dir(fmt="modelopt", recipe="all-linear")
    code = ("import sys\nfrom nvfp4tools.cli import main\n"
            "try:\n    main(['inspect', sys.argv[1], '--format', 'json'])\nexcept SystemExit as e:\n    code = e.code\n"
            "heavy = [m for m in ('torch', 'numpy', 'ml_dtypes', 'gguf', 'safetensors') if m in sys.modules]\n"
            "sys.stderr.write('HEAVY=' + ','.join(heavy))\n")
    r = subprocess.run([sys.executable, "-c", code, p], capture_output=True, text=True)
    assert "HEAVY=" in r.stderr and r.stderr.strip().endswith("HEAVY="), r.stderr[-500:]


def test_python_dash_m(synth_dir):
    r = subprocess.run([sys.executable, "-m", "nvfp4tools", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and "nvfp4tools" in r.stdout


def test_entry_point_output_and_codes(synth_dir, tmp_path):
    """The installed command's whole output arrives and its exit codes are the documented ones."""
    import json

    p = synth_dir(fmt="modelopt", recipe="all-linear")
    r = subprocess.run([sys.executable, "-m", "nvfp4tools", "inspect", p, "--format", "json"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and json.loads(r.stdout)["format"] == "modelopt"
    r = subprocess.run([sys.executable, "-m", "nvfp4tools", "inspect", str(tmp_path / "missing")],
                       capture_output=True, text=True)
    assert r.returncode == 3 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = subprocess.run([sys.executable, "-m", "nvfp4tools", "inspect"], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_internal_error_is_one_line(run_cli, monkeypatch):
    import nvfp4tools.formats as F

    def boom(*a, **k):
        raise ZeroDivisionError("synthetic bug")

    monkeypatch.setattr(F, "read", boom)
    monkeypatch.delenv("NVFP4TOOLS_DEBUG", raising=False)
    r = run_cli("inspect", ".")
    assert r.exit_code == 70
    assert "internal error" in r.stderr and "Traceback" not in r.stderr


def test_demo_runs(run_cli):
    r = run_cli("demo")
    assert r.exit_code == 0, r.stderr
    assert "nvfp4 (W4A4)" in r.stdout


@pytest.mark.parametrize("args,schema", [
    (["estimate", "{p}", "--gpu", "rtx4090", "--context", "2048", "--format", "json"], "estimate.json"),
    (["estimate", "{p}", "--gpu", "all", "--context", "2048", "--format", "json"], "estimate-all.json"),
    (["gpus", "--format", "json"], "gpus.json"),
    (["verify", "{p}", "--sample", "3", "--format", "json"], "verify.json"),
    (["convert", "{p}", "{tmp}/o", "--to", "compressed-tensors", "--dry-run", "--format", "json"], "convert.json"),
])
def test_every_json_output_matches_its_schema(synth_dir, run_cli, tmp_path, args, schema):
    jsonschema = pytest.importorskip("jsonschema")
    p = synth_dir(fmt="modelopt", recipe="all-linear")
    r = run_cli(*[a.format(p=p, tmp=tmp_path) for a in args])
    assert r.exit_code == 0, r.stderr
    with open(os.path.join(ROOT, "docs", "schema", schema)) as fh:
        jsonschema.validate(json.loads(r.stdout), json.load(fh))
