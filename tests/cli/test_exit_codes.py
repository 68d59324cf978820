"""docs/exit-codes.md, row by row: each command's codes for the inputs that produce them, every
error one line on stderr, and every error class documented with the code it carries."""

from __future__ import annotations

import inspect as pyinspect
import os
import re

import pytest

from nvfp4tools import errors

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    from nvfp4tools.synth import synthesize

    base = tmp_path_factory.mktemp("codes")
    p = {k: str(base / k) for k in ("ok", "bf16", "noconfig", "bad", "policy")}
    synthesize(p["ok"], fmt="modelopt", recipe="all-linear")
    synthesize(p["bf16"], fmt="bf16")
    synthesize(p["noconfig"], fmt="modelopt", recipe="all-linear")
    os.remove(os.path.join(p["noconfig"], "config.json"))
    os.makedirs(p["bad"])
    with open(os.path.join(p["bad"], "model.safetensors"), "wb") as fh:
        fh.write(b"\xff" * 8 + b"{")  # a header length far beyond the file
    with open(p["policy"], "w") as fh:
        fh.write("version = 1\n[quantization.roles]\nexperts = \"int4\"\n")
    p["missing"] = str(base / "missing")
    return p


def _cases():
    # (id, argv with {placeholders}, expected code, a piece of stderr or None)
    return [
        ("inspect-ok", ["inspect", "{ok}"], 0, None),
        ("inspect-usage-option", ["inspect", "{ok}", "--bogus"], 2, "No such option"),
        ("inspect-usage-format", ["inspect", "{ok}", "--input-format", "foo"], 2, "unknown format 'foo'"),
        ("inspect-missing", ["inspect", "{missing}"], 3, "no such file or directory"),
        ("inspect-malformed", ["inspect", "{bad}"], 3, "FormatError"),
        ("estimate-fits", ["estimate", "{ok}", "--gpu", "rtx4090"], 0, None),
        ("estimate-does-not-fit", ["estimate", "{ok}", "--gpu", "rtx4090", "--weights-gib", "30"], 1, None),
        ("estimate-usage-context", ["estimate", "{ok}", "--context", "0"], 2, "--context"),
        ("estimate-usage-vram", ["estimate", "{ok}", "--vram", "24"], 2, "24GiB"),
        ("estimate-usage-tp", ["estimate", "{ok}", "--tp", "64"], 2, "valid"),
        ("estimate-usage-gpu", ["estimate", "{ok}", "--gpu", "nope"], 2, "unknown GPU"),
        ("estimate-no-config", ["estimate", "{noconfig}"], 3, "config.json"),
        ("verify-ok", ["verify", "{ok}", "--sample", "2"], 0, None),
        ("verify-unrelated-original", ["verify", "{ok}", "--sample", "2", "--against", "{bf16}", "--min-sqnr", "40"], 1,
         None),
        ("verify-usage-backend", ["verify", "{ok}", "--backend", "nope"], 2, "unknown backend"),
        ("verify-missing", ["verify", "{missing}"], 3, "no such file"),
        ("verify-no-quantized-layer", ["verify", "{bf16}"], 2, "no quantized linear layer"),
        ("convert-dry-run", ["convert", "{ok}", "{out}", "--to", "compressed-tensors", "--dry-run"], 0, None),
        ("convert-refused-lossy", ["convert", "{bf16}", "{out}", "--to", "modelopt"], 3, "--allow-lossy"),
        ("convert-refused-destination", ["convert", "{ok}", "{ok}", "--to", "modelopt"], 2, "destination"),
        ("convert-usage-to", ["convert", "{ok}", "{out}", "--to", "foo"], 2, "'foo'"),
        ("convert-missing", ["convert", "{missing}", "{out}", "--to", "modelopt"], 3, "no such file"),
        ("check-ok", ["check", "{ok}"], 0, None),
        ("check-requirement-fails", ["check", "{ok}", "--policy", "{policy}"], 1, None),
        ("check-bad-policy", ["check", "{ok}", "--policy", "{missing}"], 2, "PolicyError"),
        ("check-missing", ["check", "{missing}"], 3, "no such file"),
        ("synth-ok", ["synth", "{out}"], 0, None),
        ("synth-usage", ["synth", "{out}", "--preset", "nope"], 2, "nope"),
        ("gpus-ok", ["gpus"], 0, None),
        ("gpus-usage", ["gpus", "--format", "xml"], 2, "xml"),
        ("demo-ok", ["demo"], 0, None),
        ("bench-usage", ["bench", "{ok}", "--ms", "x"], 2, None),
        ("root-unknown-command", ["nonsense"], 2, "No such command"),
        ("root-no-argument", ["inspect"], 2, "Missing argument"),
    ]


@pytest.mark.parametrize("case", _cases(), ids=lambda c: c[0])
def test_exit_code(case, paths, run_cli, tmp_path):
    _, argv, code, needle = case
    argv = [a.format(**paths, out=str(tmp_path / "out")) for a in argv]
    r = run_cli(*argv)
    assert r.exit_code == code, (argv, r.stdout[-1500:], r.stderr)
    if code >= 2:
        err = r.stderr.strip()
        assert len(err.splitlines()) == 1, err
        assert "Traceback" not in err and "internal error" not in err
        if needle:
            assert needle in err, err


def test_bench_without_a_gpu_is_an_environment_error(paths, run_cli):
    from nvfp4tools.kernels_ref.dispatch import status

    if any(s["available"] for s in status() if s["name"] not in ("ref", "ggml-cpu")):   # the CPU backends
        pytest.skip("a GPU backend is available here")
    r = run_cli("bench", paths["ok"])
    assert r.exit_code == 4 and len(r.stderr.strip().splitlines()) == 1 and "CUDA" in r.stderr


def test_every_error_class_is_documented_with_its_code():
    with open(os.path.join(ROOT, "docs", "exit-codes.md")) as fh:
        doc = fh.read()
    rows = dict(re.findall(r"^\| `(\w+)` \| (\d+) \|", doc, re.M))
    from nvfp4tools.check.policy import PolicyError

    classes = [c for _, c in pyinspect.getmembers(errors, pyinspect.isclass)
               if issubclass(c, errors.Nvfp4ToolsError) and c is not errors.Nvfp4ToolsError] + [PolicyError]
    for c in classes:
        assert c.__name__ in rows, f"{c.__name__} is not in docs/exit-codes.md"
        assert int(rows[c.__name__]) == c.exit_code, c.__name__


def test_every_command_has_a_row(run_cli):
    from nvfp4tools.cli import _LAZY

    with open(os.path.join(ROOT, "docs", "exit-codes.md")) as fh:
        documented = set(re.findall(r"^\| `(\w+)` \| (?!\d)", fh.read(), re.M))
    assert set(_LAZY) <= documented
