"""What ``check`` writes besides its JSON: the table, JUnit XML, and GitHub Actions annotations
and job summary. All rendered from the one report dict, so no two outputs can disagree.

JUnit: one ``<testsuite>`` named after the checkpoint, one ``<testcase>`` per requirement
(``classname`` = its group), ``<failure>`` for fail and ``<skipped>`` for unchecked: the subset
of the Ant/Surefire JUnit schema that GitHub (test-reporter actions), GitLab
(``artifacts:reports:junit``) and Jenkins (junit plugin) all read.

GitHub Actions: workflow commands (``::error title=...::message``) go to stdout, where the runner
reads them; the Markdown summary is appended to the file ``$GITHUB_STEP_SUMMARY`` names.
"""

from __future__ import annotations

from typing import Any
from xml.etree import ElementTree as ET

from tabulate import tabulate

_MARK = {"pass": "PASS", "fail": "FAIL", "unchecked": "UNCHECKED"}


def _text(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.1f}" if abs(v) >= 100 else f"{v:.4g}"
    return str(v)


def render_table(r: dict[str, Any]) -> str:
    head = (f"{r['source']} ({r['format']}{', Hub headers only' if r['remote'] else ''}) "
            f"against policy {r['policy']['source']}")
    rows = [[_MARK[q["status"]], q["id"], q["title"], _text(q["measured"]), _text(q["limit"])] for q in r["requirements"]]
    lines = [head, "", tabulate(rows, headers=["", "requirement", "what", "measured", "limit"], tablefmt="simple")]
    details = [q for q in r["requirements"] if q["status"] != "pass" and q["detail"]]
    if details:
        lines.append("")
        for q in details:
            lines.append(f"{_MARK[q['status']].lower()} {q['id']}: {q['detail']}")
    s = r["summary"]
    lines += ["", f"verdict: {r['verdict'].upper()} ({s['n_passed']} passed, {s['n_failed']} failed, "
                  f"{s['n_unchecked']} unchecked{'; unchecked fails this policy' if r['policy']['fail_on_unchecked'] else ''})"]
    return "\n".join(lines)


def junit_xml(r: dict[str, Any]) -> bytes:
    s = r["summary"]
    suites = ET.Element("testsuites", name="nvfp4tools check", tests=str(s["n_requirements"]),
                        failures=str(s["n_failed"]), errors="0", skipped=str(s["n_unchecked"]))
    suite = ET.SubElement(suites, "testsuite", name=f"nvfp4tools check {r['source']}", tests=str(s["n_requirements"]),
                          failures=str(s["n_failed"]), errors="0", skipped=str(s["n_unchecked"]), time="0")
    props = ET.SubElement(suite, "properties")
    for k, v in (("source", r["source"]), ("format", r["format"]), ("policy", r["policy"]["source"]),
                 ("tool_version", r["tool_version"])):
        ET.SubElement(props, "property", name=k, value=str(v))
    for q in r["requirements"]:
        case = ET.SubElement(suite, "testcase", classname=q["group"], name=f"{q['id']}: {q['title']}", time="0")
        msg = f"measured {_text(q['measured'])}, limit {_text(q['limit'])}"
        if q["status"] == "fail":
            f = ET.SubElement(case, "failure", message=msg, type="RequirementFailed")
            f.text = q["detail"] or msg
        elif q["status"] == "unchecked":
            ET.SubElement(case, "skipped", message=q["detail"] or "not checked here")
        else:
            out = ET.SubElement(case, "system-out")
            out.text = msg
    return ET.tostring(suites, encoding="utf-8", xml_declaration=True)


def _escape_data(s: str) -> str:
    return s.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(s: str) -> str:
    return _escape_data(s).replace(":", "%3A").replace(",", "%2C")


def github_annotations(r: dict[str, Any]) -> list[str]:
    """One workflow command per failed (error) and unchecked (warning) requirement."""
    out = []
    for q in r["requirements"]:
        if q["status"] == "pass":
            continue
        level = "error" if q["status"] == "fail" else "warning"
        title = _escape_property(f"nvfp4tools check: {q['id']}")
        msg = f"{q['title']}: measured {_text(q['measured'])}, limit {_text(q['limit'])}"
        if q["detail"]:
            msg += f" ({q['detail']})"
        out.append(f"::{level} title={title}::{_escape_data(msg)}")
    return out


def _md(s: Any) -> str:
    return _text(s).replace("|", "\\|").replace("\n", " ")


def markdown_summary(r: dict[str, Any]) -> str:
    s = r["summary"]
    icon = {"pass": "✅", "fail": "❌", "unchecked": "⚠️"}
    lines = [f"### nvfp4tools check: {r['verdict'].upper()}", "",
             f"`{r['source']}` ({r['format']}), policy `{r['policy']['source']}`: {s['n_passed']} passed, "
             f"{s['n_failed']} failed, {s['n_unchecked']} unchecked", "",
             "| | requirement | measured | limit | detail |", "|---|---|---|---|---|"]
    for q in r["requirements"]:
        lines.append(f"| {icon[q['status']]} | {_md(q['title'])} | {_md(q['measured'])} | {_md(q['limit'])} | "
                     f"{_md(q['detail'] or '')} |")
    return "\n".join(lines) + "\n"
