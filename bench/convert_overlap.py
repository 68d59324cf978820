"""Where a lossless convert's time goes beside `cp -r`: the command's own copy with nothing else
running in the process, against the same copy beside the conversion's Python work.

Cases, in a shuffled order each round, `sync` after removing the previous output:
- `cp -r` of the checkpoint folder;
- `command`: `nvfp4tools convert SRC OUT --to compressed-tensors`, as users run it;
- `copy beside work`: the same command in a child that also reports how long the early-copy
  thread took (``EarlyCopy``'s per-shard ``seconds``);
- `copy alone`: the same child, with the main thread held until the copy is over, so the copy
  runs with the process otherwise idle (its wall time includes the work done after it, serially);
- `copy beside a read`: the same child, whose main thread only reads the source checkpoint (the
  header parse and model build every conversion starts with), waits for the copy and exits: the
  least work a conversion can do beside its copy.

The copy thread's time beside the work against alone and beside a read is what the main thread's
work (header parses, plan, patches, verification) costs the kernel's copy on this machine. Every
case also reports its process CPU; the children report the copy thread's and the main thread's own
CPU (user + system): a copy that takes longer beside the work without more CPU was waiting.
bench/RESULTS.md, convert.

    python bench/convert_overlap.py [--runs 5] [--dir /tmp/nvfp4tools-bench-3g] [--python PATH]

--python: the interpreter of a venv with the wheel installed (default: this one).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time

from _warm import warm

CHILD = r"""
import atexit, json, os, resource, sys
from nvfp4tools import early_copy as ec
mode = sys.argv[1]
shards = []
copy_cpu = []
begin = ec.EarlyCopy.begin.__func__
run = ec.EarlyCopy._run

def timed_run(self):
    try:
        run(self)
    finally:   # the copy thread's own CPU time (user + system), before it exits
        r = resource.getrusage(resource.RUSAGE_THREAD)
        copy_cpu.append((r.ru_utime, r.ru_stime))

def timed_begin(cls, *a, **k):
    early = begin(cls, *a, **k)
    if early is not None:
        shards.extend(early.shards.values())
        if mode == "read":
            from nvfp4tools import formats
            formats.read(sys.argv[2])
        if mode in ("alone", "read"):   # hold the main thread (before click's import) until the copy is over
            for s in early.shards.values():
                s.done.wait()
        if mode == "read":
            report()
            import shutil
            shutil.rmtree(early.tmp)   # (os._exit skips the command's own clean-up)
            os._exit(0)   # (not the rest of the conversion)
    return early

def report():
    print("COPY_S " + json.dumps(sum(s.seconds for s in shards)), file=sys.stderr, flush=True)
    r = resource.getrusage(resource.RUSAGE_THREAD)   # (atexit runs on the main thread)
    print("COPY_CPU " + json.dumps([sum(u for u, _ in copy_cpu), sum(s for _, s in copy_cpu),
                                    r.ru_utime, r.ru_stime]), file=sys.stderr, flush=True)

ec.EarlyCopy.begin = classmethod(timed_begin)
ec.EarlyCopy._run = timed_run
atexit.register(report)
sys.argv = ["nvfp4tools", "convert", sys.argv[2], sys.argv[3], "--to", "compressed-tensors"]
from nvfp4tools.cli import main
main()
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--dir", default="/tmp/nvfp4tools-bench-3g", help="made by bench/convert_speed.py")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    src, out = a.dir, a.dir + "-out"
    if not os.path.isfile(os.path.join(src, "model.safetensors")):
        raise SystemExit(f"{src}: no checkpoint; run bench/convert_speed.py once to make it")
    exe = os.path.join(os.path.dirname(a.python), "nvfp4tools")
    print(warm(src), flush=True)
    cases = {
        "cp -r": ["cp", "-r", src, out],
        "command": [exe, "convert", src, out, "--to", "compressed-tensors"],
        "copy beside work": [a.python, "-c", CHILD, "beside", src, out],
        "copy alone": [a.python, "-c", CHILD, "alone", src, out],
        "copy beside a read": [a.python, "-c", CHILD, "read", src, out],
    }
    wall: dict[str, list[float]] = {k: [] for k in cases}
    copy: dict[str, list[float]] = {k: [] for k in cases}
    copy_cpu: dict[str, list[list[float]]] = {k: [] for k in cases}   # copy user, sys, main user, sys
    cpu: dict[str, list[float]] = {k: [] for k in cases}
    rng = random.Random(a.seed)
    for _ in range(a.runs):
        order = list(cases)
        rng.shuffle(order)
        for name in order:
            shutil.rmtree(out, ignore_errors=True)
            for left in glob.glob(os.path.join(os.path.dirname(out), "." + os.path.basename(out) + ".nvfp4tools-tmp-*")):
                shutil.rmtree(left, ignore_errors=True)   # a killed run's temporary folder
            os.sync()
            r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            # (cwd /: `python -c` in a checkout would import the source tree, not the wheel)
            p = subprocess.run(cases[name], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd="/")
            wall[name].append(time.perf_counter() - t0)
            r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu[name].append(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime)
            if p.returncode != 0:
                raise SystemExit(f"{name} failed: {p.stderr[-1500:]}")
            for line in p.stderr.splitlines():
                if line.startswith("COPY_S "):
                    copy[name].append(json.loads(line[7:]))
                elif line.startswith("COPY_CPU "):
                    copy_cpu[name].append(json.loads(line[9:]))
    shutil.rmtree(out, ignore_errors=True)
    for name in cases:
        w = wall[name]
        line = f"{name:<20} wall median {statistics.median(w):5.2f} s  min {min(w):5.2f}"
        if copy[name]:
            line += f"   copy thread median {statistics.median(copy[name]):5.2f} s  min {min(copy[name]):5.2f}"
            cc = copy_cpu[name]
            line += (f"  its cpu user+sys {statistics.median(c[0] for c in cc):4.2f}+{statistics.median(c[1] for c in cc):4.2f} s"
                     f"  main thread {statistics.median(c[2] for c in cc):4.2f}+{statistics.median(c[3] for c in cc):4.2f} s")
        print(line + f"   process cpu median {statistics.median(cpu[name]):5.2f} s   runs {' '.join(f'{x:.2f}' for x in w)}")


if __name__ == "__main__":
    main()
