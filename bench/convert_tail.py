"""Where a convert's wall time goes outside its copy: the start (execve to the first copy
request), the copy, and the tail (copy end to the rename that publishes the output, the rename
to exit_group, exit_group to the process being gone), from `strace --seccomp-bpf`, which stops
the process only at the four traced system calls (execve, copy_file_range, rename, exit_group),
so the timing is close to an untraced run's.

    python bench/convert_tail.py [--runs 5] [--dir /tmp/nvfp4tools-bench-3g] [--exe PATH]

Needs strace. The output folder is removed and `sync` run before every run.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import tempfile

from _warm import warm

_TS = re.compile(r"^(\d+)\s+(\d+):(\d+):(\d+\.\d+)\s+(.*)$")


def phases(trace: str) -> dict[str, float]:
    """Milliseconds of each phase from one `strace -f -tt` log."""
    rows = []
    for line in trace.splitlines():
        m = _TS.match(line)
        if m and "resumed>" not in m.group(5):
            t = int(m.group(2)) * 3600 + int(m.group(3)) * 60 + float(m.group(4))
            rows.append((int(m.group(1)), t, m.group(5)))
    first = lambda pred: next(r for r in rows if pred(r))  # noqa: E731
    main_pid = rows[0][0]
    execve = first(lambda r: r[2].startswith("execve("))[1]
    copy0 = first(lambda r: r[2].startswith("copy_file_range("))[1]
    copier = first(lambda r: r[2].startswith("copy_file_range("))[0]
    copy_end = first(lambda r: r[0] == copier and "+++ exited" in r[2])[1]
    rename = first(lambda r: r[2].startswith("rename("))[1]
    exit_group = [r for r in rows if r[0] == main_pid and r[2].startswith("exit_group(")][-1][1]
    gone = [r for r in rows if r[0] == main_pid and "+++ exited" in r[2]][-1][1]
    ms = lambda a, b: round((b - a) * 1000, 1)  # noqa: E731
    return {"start": ms(execve, copy0), "copy": ms(copy0, copy_end), "to rename": ms(copy_end, rename),
            "to exit_group": ms(rename, exit_group), "to gone": ms(exit_group, gone), "total": ms(execve, gone)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--dir", default="/tmp/nvfp4tools-bench-3g")
    ap.add_argument("--exe", default=shutil.which("nvfp4tools"), help="the nvfp4tools command (a wheel's, ideally)")
    a = ap.parse_args()
    if not shutil.which("strace"):
        raise SystemExit("strace is needed")
    out = os.path.join(os.path.dirname(os.path.abspath(a.dir)), ".nvfp4tools-bench-tail-out")
    cols = ["start", "copy", "to rename", "to exit_group", "to gone", "total"]
    print(warm(a.dir), flush=True)
    print("ms per phase: " + "  ".join(f"{c:>13}" for c in cols))
    with tempfile.TemporaryDirectory() as tmp:
        log = os.path.join(tmp, "strace.txt")
        for _ in range(a.runs):
            shutil.rmtree(out, ignore_errors=True)
            subprocess.run(["sync"], check=True)
            subprocess.run(["strace", "-f", "-tt", "--seccomp-bpf", "-o", log, "-e",
                            "trace=execve,copy_file_range,rename,exit_group", a.exe, "convert", a.dir, out,
                            "--to", "compressed-tensors"], check=True, stdout=subprocess.DEVNULL)
            with open(log) as fh:
                p = phases(fh.read())
            print("              " + "  ".join(f"{p[c]:>13}" for c in cols))
    shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
