"""nvfp4tools check: policies that pass and fail, policy errors with file and line, JUnit against
the XSD shape CI systems read, GitHub annotations and summary, Hub ids, and docs/ci.md's jobs."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil

import pytest

from tests.helpers import zero_part

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _check(run_cli, *args):
    r = run_cli("check", *args, "--format", "json")
    assert r.exit_code in (0, 1), r.stderr
    return r.exit_code, json.loads(r.stdout)


def _by_id(rep):
    return {q["id"]: q for q in rep["requirements"]}


def _policy(tmp_path, text: str, name: str = "policy.toml") -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    from nvfp4tools.synth import synthesize

    base = tmp_path_factory.mktemp("check")
    out = {k: str(base / k) for k in ("nvfp4", "experts_only", "orig", "other", "bf16")}
    synthesize(out["nvfp4"], fmt="modelopt", recipe="all-linear", seed=3)
    synthesize(out["experts_only"], fmt="modelopt", recipe="experts-only", seed=3)
    synthesize(out["orig"], fmt="bf16", seed=3)
    synthesize(out["other"], fmt="bf16", seed=5)
    return out


def test_defaults_pass_a_clean_checkpoint(ckpts, run_cli):
    code, rep = _check(run_cli, ckpts["nvfp4"])
    ids = _by_id(rep)
    assert code == 0 and rep["verdict"] == "pass" and rep["policy"]["source"] == "built-in defaults"
    assert {"claims", "findings", "numerics.verify", "numerics.backend.ref"} <= set(ids)
    assert all(q["status"] == "pass" for q in rep["requirements"])
    assert ids["numerics.verify"]["measured"].startswith("0 of 16 layers")
    table = run_cli("check", ckpts["nvfp4"]).stdout
    assert "verdict: PASS" in table and "numerics.backend.ref" in table


def test_defaults_fail_a_degenerate_layer_the_sample_misses(ckpts, run_cli, tmp_path):
    """The deep scan (default on) reads every layer; the verify sample alone might miss it."""
    from nvfp4tools import formats

    p = str(tmp_path / "deg")
    shutil.copytree(ckpts["nvfp4"], p)
    t = [t for t in formats.read(p).tensors.values() if t.scheme.quantized][-1]
    zero_part(p, t.part("block_scale"))
    code, rep = _check(run_cli, p)
    f = _by_id(rep)["findings"]
    assert code == 1 and f["status"] == "fail" and "degenerate_layer" in f["detail"] and t.name in f["detail"]


def test_claims_fail_when_the_config_lies(ckpts, run_cli, tmp_path):
    """A ModelOpt config claiming NVFP4 over BF16 tensors: the checkpoint's own claim is false."""
    p = str(tmp_path / "liar")
    shutil.copytree(ckpts["orig"], p)
    shutil.copy(os.path.join(ckpts["nvfp4"], "hf_quant_config.json"), p)
    code, rep = _check(run_cli, p)
    assert code == 1 and _by_id(rep)["claims"]["status"] == "fail", rep["requirements"]


POLICY = """\
version = 1

[findings]
fail-on = ["experts_unquantized"]
ignore = ["attention_4bit"]

[quantization]
min-share-quantized = 0.5
input-scales = ["experts"]

[quantization.roles]
experts = "nvfp4"
attention = ["bf16", "nvfp4"]

[[targets]]
name = "l40s"
gpu = "l40s"
engine = "vllm"
context = 4096
kv-dtype = "fp8"
min-concurrency = 8
min-kv-tokens = 100000
min-decode-tokens-per-s = 50

[[targets]]
name = "llamacpp-4090"
gpu = "rtx4090"
engine = "llamacpp"
context = 4096

[numerics]
sample = 8
backends = ["ref"]
min-sqnr-db = { "*" = 15, attention = 18 }
"""


def test_policy_that_passes(ckpts, run_cli, tmp_path):
    code, rep = _check(run_cli, ckpts["nvfp4"], "--policy", _policy(tmp_path, POLICY), "--against", ckpts["orig"])
    ids = _by_id(rep)
    assert code == 0, [q for q in rep["requirements"] if q["status"] != "pass"]
    for rid in ("quantization.role.experts", "quantization.role.attention", "quantization.share",
                "quantization.input-scales.experts", "target.l40s.fits", "target.l40s.kv-tokens",
                "target.l40s.concurrency", "target.l40s.decode", "target.llamacpp-4090.fits",
                "numerics.against.source", "numerics.against.unmatched", "numerics.against.attention",
                "numerics.against.experts"):
        assert ids[rid]["status"] == "pass", ids.get(rid)
    assert ids["quantization.role.experts"]["measured"] == "nvfp4 100.0%"
    assert ids["target.l40s.kv-tokens"]["limit"] == ">= 100000" and ids["target.l40s.kv-tokens"]["measured"] > 100000
    assert ids["numerics.against.attention"]["limit"] == "SQNR >= 18 dB"


def test_policy_that_fails_says_what_and_by_how_much(ckpts, run_cli, tmp_path):
    text = POLICY.replace('attention = ["bf16", "nvfp4"]', 'attention = "bf16"').replace(
        "min-share-quantized = 0.5", "min-share-quantized = 0.9").replace("min-concurrency = 8",
                                                                           "min-concurrency = 1e9")
    code, rep = _check(run_cli, ckpts["nvfp4"], "--policy", _policy(tmp_path, text), "--against", ckpts["other"])
    ids = _by_id(rep)
    assert code == 1 and rep["verdict"] == "fail"
    failed = {q["id"] for q in rep["requirements"] if q["status"] == "fail"}
    assert {"quantization.role.attention", "quantization.share", "target.l40s.concurrency",
            "numerics.against.source", "numerics.against.attention", "numerics.against.experts"} <= failed
    assert "quantization.role.experts" not in failed
    assert ids["quantization.share"]["limit"] == 0.9 and ids["quantization.share"]["measured"] < 0.9
    assert "not this checkpoint's source" in ids["numerics.against.source"]["detail"]
    table = run_cli("check", ckpts["nvfp4"], "--policy", _policy(tmp_path, text), "--against", ckpts["other"])
    assert table.exit_code == 1 and "FAIL  quantization.role.attention" in table.stdout


def test_required_role_with_no_tensors_fails(ckpts, run_cli, tmp_path):
    code, rep = _check(run_cli, ckpts["experts_only"], "--policy",
                       _policy(tmp_path, 'version = 1\n[quantization.roles]\nshared_expert = "nvfp4"\n'))
    q = _by_id(rep)["quantization.role.shared_expert"]
    assert code == 1 and q["status"] == "fail" and q["measured"] == "no shared_expert tensors"


def test_backends_that_cannot_run(ckpts, run_cli, tmp_path):
    from nvfp4tools.kernels_ref.dispatch import status

    missing = [s["name"] for s in status() if not s["available"]]
    if not missing:
        pytest.skip("every backend runs on this machine")
    text = f'version = 1\n[numerics]\nbackends = ["ref", "{missing[0]}"]\n'
    code, rep = _check(run_cli, ckpts["nvfp4"], "--policy", _policy(tmp_path, text))
    q = _by_id(rep)[f"numerics.backend.{missing[0]}"]
    assert code == 1 and q["status"] == "fail" and q["measured"] == "unavailable" and q["detail"]
    code, rep = _check(run_cli, ckpts["nvfp4"], "--policy",
                       _policy(tmp_path, text + "allow-missing-backends = true\n", "allow.toml"))
    assert code == 0 and _by_id(rep)[f"numerics.backend.{missing[0]}"]["status"] == "unchecked"
    code, rep = _check(run_cli, ckpts["nvfp4"], "--policy",
                       _policy(tmp_path, "version = 1\nfail-on-unchecked = true\n" + text.split("\n", 1)[1]
                               + "allow-missing-backends = true\n", "strict.toml"))
    assert code == 1 and rep["verdict"] == "fail" and rep["summary"]["n_failed"] == 0


@pytest.mark.parametrize("text, line, needle", [
    ("version = 1\nbogus = 3\n", 2, "unknown key 'bogus'"),
    ("version = 1\n[findings]\nseverity = { x = \"fatal\" }\n", 3, "severity 'fatal'"),
    ("version = 1\n[quantization.roles]\nexpert = \"nvfp4\"\n", 3, "unknown role 'expert'"),
    ("version = 1\n[quantization]\nmin-share-quantized = 1.5\n", 3, "expected a number from 0 to 1"),
    ("version = 1\n\n[[targets]]\ngpu = \"l40s\"\ntp = \"2\"\n", 5, "targets[0].tp = '2', expected an integer"),
    ("version = 1\n[[targets]]\nengine = \"vllm\"\n", 2, "has no 'gpu'"),
    ("version = 1\n[[targets]]\ngpu = \"l40s\"\nengine = \"tgi\"\n", 4, "engine 'tgi'"),
    ("version = 1\n[[targets]]\ngpu = \"l40s\"\ncontext = 999999\n", 2, "larger than the model's maximum"),
    ("version = 1\n[[targets]]\ngpu = \"nope\"\n", 2, "unknown GPU 'nope'"),
    ("version = 1\n[numerics]\nbackends = [\"nope\"]\n", 3, "unknown backend 'nope'"),
    ("version = 1\n[numerics]\nsample = 0\n", 3, "expected an integer >= 1"),
    ("version = 2\n", 1, "policy version 2 is not supported"),
    ("[findings]\ndeep = true\n", None, "missing key 'version'"),
    ("version = 1\n[findings\n", None, "not valid TOML"),
])
def test_bad_policy_names_file_line_and_key(ckpts, run_cli, tmp_path, text, line, needle):
    path = _policy(tmp_path, text)
    r = run_cli("check", ckpts["nvfp4"], "--policy", path)
    assert r.exit_code == 2, r.stdout + r.stderr
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("PolicyError: ") and needle in err, err
    if line is not None:
        assert f"{path}:{line}:" in err


def test_missing_policy_file_and_pyproject(ckpts, run_cli, tmp_path):
    r = run_cli("check", ckpts["nvfp4"], "--policy", str(tmp_path / "nope.toml"))
    assert r.exit_code == 2 and "no such policy file" in r.stderr
    pp = tmp_path / "pyproject.toml"
    pp.write_text('[project]\nname = "x"\n')
    r = run_cli("check", ckpts["nvfp4"], "--policy", str(pp))
    assert r.exit_code == 2 and "no [tool.nvfp4tools] table" in r.stderr
    pp.write_text('[project]\nname = "x"\n\n[tool.nvfp4tools]\nversion = 1\n\n[tool.nvfp4tools.quantization.roles]\n'
                  'experts = "int4"\n')
    code, rep = _check(run_cli, ckpts["nvfp4"], "--policy", str(pp))
    assert code == 1 and _by_id(rep)["quantization.role.experts"]["status"] == "fail"
    pp.write_text('[tool.nvfp4tools]\nversion = 1\n\n[tool.nvfp4tools.findings]\nwhat = 1\n')
    r = run_cli("check", ckpts["nvfp4"], "--policy", str(pp))
    assert r.exit_code == 2 and f"{pp}:5: findings.what" in r.stderr


def test_json_schema_and_junit_xsd(ckpts, run_cli, tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    xmlschema = pytest.importorskip("xmlschema")
    with open(os.path.join(ROOT, "docs", "schema", "check.json")) as fh:
        schema = json.load(fh)
    xsd = xmlschema.XMLSchema(os.path.join(ROOT, "tests", "data", "junit.xsd"))
    text = POLICY.replace('attention = ["bf16", "nvfp4"]', 'attention = "bf16"') + \
        'backends = ["ref", "torch"]\nallow-missing-backends = true\n'
    text = text.replace('backends = ["ref"]\n', "")
    junit = str(tmp_path / "check.xml")
    code, rep = _check(run_cli, ckpts["nvfp4"], "--policy", _policy(tmp_path, text), "--junit", junit)
    jsonschema.validate(rep, schema)
    xsd.validate(junit)
    from xml.etree import ElementTree as ET

    suite = ET.parse(junit).getroot().find("testsuite")
    cases = suite.findall("testcase")
    assert len(cases) == rep["summary"]["n_requirements"] == int(suite.get("tests"))
    assert len([c for c in cases if c.find("failure") is not None]) == rep["summary"]["n_failed"] == int(suite.get("failures")) >= 1
    assert len([c for c in cases if c.find("skipped") is not None]) == rep["summary"]["n_unchecked"] == int(suite.get("skipped"))
    failed = [c for c in cases if c.find("failure") is not None][0]
    assert failed.get("classname") == "quantization" and "measured" in failed.find("failure").get("message")


def test_github_annotations_and_step_summary(ckpts, run_cli, tmp_path, monkeypatch):
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    text = 'version = 1\n[quantization]\nmin-share-quantized = 0.99\n[quantization.roles]\nexperts = "nvfp4"\n'
    r = run_cli("check", ckpts["nvfp4"], "--policy", _policy(tmp_path, text))
    assert r.exit_code == 1
    ann = [line for line in r.stdout.splitlines() if line.startswith("::")]
    assert len(ann) == 1 and ann[0].startswith("::error title=nvfp4tools check%3A quantization.share::")
    assert "measured 0.5783, limit 0.99" in ann[0]
    md = summary.read_text()
    assert md.startswith("### nvfp4tools check: FAIL") and "| ❌ | share of parameters quantized | 0.5783 | 0.99 |" in md
    assert md.count("| ✅ |") == 5  # claims, findings, experts, numerics.verify, backend ref
    # JSON output keeps stdout pure JSON; the summary still gets the table
    r = run_cli("check", ckpts["nvfp4"], "--policy", _policy(tmp_path, text), "--format", "json")
    json.loads(r.stdout)
    assert summary.read_text().count("### nvfp4tools check") == 2
    monkeypatch.delenv("GITHUB_ACTIONS")
    r = run_cli("check", ckpts["nvfp4"], "--policy", _policy(tmp_path, text))
    assert not any(line.startswith("::") for line in r.stdout.splitlines())


def test_annotation_escaping():
    from nvfp4tools.check.outputs import github_annotations

    rep = {"requirements": [{"id": "a,b:c", "group": "g", "title": "100% sure\nreally", "status": "fail",
                             "measured": 1, "limit": 0, "detail": ""}]}
    (line,) = github_annotations(rep)
    assert line == "::error title=nvfp4tools check%3A a%2Cb%3Ac::100%25 sure%0Areally: measured 1, limit 0"


def test_hub_id_checks_headers_and_lists_what_is_unchecked(monkeypatch, synth_dir, run_cli, tmp_path,
                                                          empty_hf_cache):
    from tests.formats.test_hub import install_fake_hub

    install_fake_hub(monkeypatch, synth_dir(fmt="modelopt", recipe="all-linear", shards=2))
    text = 'version = 1\n[quantization.roles]\nexperts = "nvfp4"\n[[targets]]\ngpu = "rtx4090"\ncontext = 2048\n'
    code, rep = _check(run_cli, "acme/tiny-nvfp4", "--policy", _policy(tmp_path, text))
    ids = _by_id(rep)
    assert rep["remote"] and code == 0 and rep["verdict"] == "pass"
    assert {k for k, q in ids.items() if q["status"] == "unchecked"} == {
        "findings.scale-values", "findings.deep", "numerics.verify"}
    assert all("Hub" in ids[k]["detail"] for k in ("findings.scale-values", "numerics.verify"))
    assert ids["quantization.role.experts"]["status"] == "pass" and ids["target.rtx4090-vllm.fits"]["status"] == "pass"


def test_unreadable_inputs_exit_3(run_cli, tmp_path, ckpts):
    r = run_cli("check", str(tmp_path / "missing"))
    assert r.exit_code == 3 and "no such file or directory" in r.stderr
    r = run_cli("check", ckpts["nvfp4"], "--against", str(tmp_path / "nope"))
    assert r.exit_code == 3 and len(r.stderr.strip().splitlines()) == 1


def _doc_blocks(path: str, lang: str) -> list[str]:
    with open(path) as fh:
        return re.findall(rf"```{lang}\n(.*?)```", fh.read(), re.S)


def test_every_toml_example_in_the_docs_is_a_valid_policy():
    from nvfp4tools.check.policy import from_dict, key_lines

    import tomllib

    for doc in ("docs/ci.md", "docs/commands/check.md"):
        blocks = _doc_blocks(os.path.join(ROOT, doc), "toml")
        assert blocks, doc
        for b in blocks:
            from_dict(tomllib.loads(b), doc, key_lines(b))


def test_ci_doc_commands(ckpts, run_cli, tmp_path, monkeypatch):
    """The GitHub and GitLab jobs of docs/ci.md: their nvfp4tools commands, run as written in a
    folder holding ./checkpoint and the doc's nvfp4tools.toml."""
    import yaml

    doc = os.path.join(ROOT, "docs", "ci.md")
    (policy,) = _doc_blocks(doc, "toml")
    workflows = [yaml.safe_load(b) for b in _doc_blocks(doc, "yaml")]
    github, gitlab = workflows
    gh_cmds = [s["run"] for s in github["jobs"]["nvfp4tools-check"]["steps"] if "nvfp4tools check" in s.get("run", "")]
    gl_cmds = [c for c in gitlab["nvfp4tools-check"]["script"] if c.startswith("nvfp4tools ")]
    assert len(gh_cmds) == 1 and len(gl_cmds) == 1
    assert gitlab["nvfp4tools-check"]["artifacts"]["reports"]["junit"] == "nvfp4tools-check.xml"
    monkeypatch.chdir(tmp_path)
    shutil.copytree(ckpts["nvfp4"], "checkpoint")
    (tmp_path / "nvfp4tools.toml").write_text(policy)
    xmlschema = pytest.importorskip("xmlschema")
    xsd = xmlschema.XMLSchema(os.path.join(ROOT, "tests", "data", "junit.xsd"))
    for env, cmd in (("github", gh_cmds[0]), ("gitlab", gl_cmds[0])):
        if env == "github":
            monkeypatch.setenv("GITHUB_ACTIONS", "true")
            monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path / "summary.md"))
        else:
            monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
            monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
        argv = shlex.split(cmd)
        assert argv[0] == "nvfp4tools"
        r = run_cli(*argv[1:])
        assert r.exit_code == 0, r.stdout + r.stderr
        assert "verdict: PASS" in r.stdout
        xsd.validate("nvfp4tools-check.xml")
        os.remove("nvfp4tools-check.xml")
    assert (tmp_path / "summary.md").read_text().startswith("### nvfp4tools check: PASS")


@pytest.mark.interop
@pytest.mark.parametrize("family", ["qwen3_moe", "mixtral", "llama"])
def test_upstream_checkpoint_gate(family, family_oracle, run_cli, tmp_path):
    """ModelOpt's NVFP4 export of each family through a policy: experts (or MLP) NVFP4 with input
    scales, fits a 4090, and against its transformers original."""
    role = "experts" if family != "llama" else "mlp"
    text = (f'version = 1\n[quantization]\ninput-scales = ["{role}"]\n[quantization.roles]\n{role} = "nvfp4"\n'
            'attention = "nvfp4"\n[[targets]]\ngpu = "rtx4090"\ncontext = 256\n[numerics]\nsample = "all"\n')
    code, rep = _check(run_cli, family_oracle(family, "modelopt_nvfp4"), "--policy", _policy(tmp_path, text),
                       "--against", family_oracle(family, "bf16"))
    assert code == 0, [q for q in rep["requirements"] if q["status"] != "pass"]
    ids = _by_id(rep)
    assert ids["numerics.against.unmatched"]["measured"] == 0 and ids[f"numerics.against.{role}"]["status"] == "pass"
    text = text.replace('attention = "nvfp4"', 'attention = "bf16"')
    code, rep = _check(run_cli, family_oracle(family, "modelopt_nvfp4"), "--policy", _policy(tmp_path, text, "b.toml"))
    assert code == 1 and _by_id(rep)["quantization.role.attention"]["status"] == "fail"


def test_policy_cannot_drop_the_checks_it_asks_for(ckpts, run_cli, tmp_path):
    """backends = [] with verify on, or an original with verify = false: a policy error (exit 2),
    not a gate that silently leaves the numerics out; an original no layer matches fails its row."""
    for text, says in (('version = 1\n[numerics]\nbackends = []\n', "no backend to verify with"),
                       ('version = 1\n[numerics]\nverify = false\nagainst = "x"\n', "but verify = false")):
        r = run_cli("check", ckpts["nvfp4"], "--policy", _policy(tmp_path, text))
        assert r.exit_code == 2 and says in r.stderr, r.stderr
    code, rep = _check(run_cli, ckpts["nvfp4"], "--against", ckpts["nvfp4"])
    src = _by_id(rep)["numerics.against.source"]
    assert code == 1 and src["status"] == "fail" and src["measured"] == "no layer matched"
