"""convert speed and memory on a ~3 GiB ModelOpt NVFP4 checkpoint (generated, real random data,
one shard), in one run beside `cp -r` of the same folder and (when importable) compressed-tensors'
own convert_checkpoint doing the same conversion. Page cache warm, `sync` before every run (so no
run pays for the previous one's writeback), median and min of N rounds, each round running every
command once, in an order of its own.

    python bench/convert_speed.py [--runs 3] [--dir /tmp/nvfp4tools-bench-3g] [--ct-python PATH] [--exe PATH]
"""

from __future__ import annotations

import argparse
import collections
import itertools
import os
import shutil
import statistics
import subprocess
import tempfile
import time

from _installed import installed_command
from _warm import warm

CT_CODE = r"""
import json, sys
from compressed_tensors.entrypoints.convert import convert_checkpoint, ModelOptNvfp4Converter
src, dst = sys.argv[1], sys.argv[2]
excl = json.load(open(src + "/hf_quant_config.json"))["quantization"]["exclude_modules"]
convert_checkpoint(src, dst, ModelOptNvfp4Converter(ignore=excl, targets=["Linear"]), max_workers=1, device="cpu")
"""


def config_3g() -> dict:
    from nvfp4tools.synth import GEMMA4_26B_A4B
    import copy
    cfg = copy.deepcopy(GEMMA4_26B_A4B)
    t = cfg["text_config"]
    t["num_hidden_layers"] = 6
    t["layer_types"] = ["sliding_attention"] * 5 + ["full_attention"]
    t["vocab_size"] = 65536
    cfg["vision_config"] = None
    return cfg


def steal_seconds() -> float:
    """CPU time the hypervisor gave to others, all CPUs (/proc/stat; 0 where there is none)."""
    try:
        with open("/proc/stat") as fh:
            f = fh.readline().split()
        return int(f[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def run(cmd: list[str]) -> tuple[float, int, float, float]:
    """(wall seconds, peak RSS bytes, CPU seconds of the child, seconds stolen by the hypervisor
    meanwhile). A command with more CPU than `cp -r` (the converter's Python beside its copy)
    loses more to a busy host than `cp -r` does; the last two columns tell such runs apart."""
    st0 = steal_seconds()
    t0 = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-f", "%M %U %S"] + cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    stolen = steal_seconds() - st0
    if p.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed: {p.stderr[-1500:]}")
    rss, user, system = p.stderr.strip().splitlines()[-1].split()
    return wall, int(rss) * 1024, float(user) + float(system), stolen


def _after_cp(after_cp: collections.Counter, prev: str | None, order) -> collections.Counter:
    """AFTER_CP (times each command ran right after cp -r) once a round in ORDER has run after PREV."""
    counts = after_cp.copy()
    for i, (name, _) in enumerate(order):
        if (order[i - 1][0] if i else prev) == "cp -r":
            counts[name] += 1
    return counts


def _unevenness(counts: collections.Counter) -> tuple:
    """The most times one command got the slot after cp -r, then all the counts (min() over the
    orders keeps the first of the most even ones)."""
    return max(counts.values(), default=0), sorted(counts.values(), reverse=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", default="/tmp/nvfp4tools-bench-3g")
    ap.add_argument("--ct-python", default=None, help="a Python with compressed-tensors installed")
    ap.add_argument("--settle", type=float, default=0.0, help="seconds to wait after sync before each run")
    ap.add_argument("--exe", default=None,
                    help="the nvfp4tools command to time (default: this checkout laid out as a wheel installs it, "
                         "with pip's console script, in a throw-away venv: bench/_installed.py)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as work:
        bench(a, a.exe or installed_command(work))


def bench(a: argparse.Namespace, exe: str) -> None:
    src = a.dir
    if not os.path.isfile(os.path.join(src, "model.safetensors")):
        from nvfp4tools.synth import synthesize
        t0 = time.perf_counter()
        synthesize(src, fmt="modelopt", recipe="all-linear", config=config_3g(), preset="custom")
        print(f"generated {src} in {time.perf_counter() - t0:.0f} s")
    # byte-compile the package as `pip install` does, for an --exe that runs this checkout (this
    # machine sets PYTHONDONTWRITEBYTECODE=1, so an editable checkout would otherwise recompile
    # ~0.1 s of source in every timed run)
    import compileall
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for sub in ("nvfp4tools", "formats", "kernels_ref"):
        compileall.compile_dir(os.path.join(repo, sub), quiet=1)
    size = sum(os.path.getsize(os.path.join(src, f)) for f in os.listdir(src))
    out = src + "-out"
    res: dict[str, list[tuple[float, int, float, float]]] = {
        "cp -r": [], "nvfp4tools": [], "nvfp4tools --verify full": [], "compressed-tensors": []}
    contenders = [(name, cmd) for name, cmd in (
        ("cp -r", ["cp", "-r", src, out]),
        ("nvfp4tools", [exe, "convert", src, out, "--to", "compressed-tensors"]),
        ("nvfp4tools --verify full", [exe, "convert", src, out, "--to", "compressed-tensors", "--verify", "full"]),
        ("compressed-tensors", [a.ct_python, "-c", CT_CODE, src, out] if a.ct_python else None)) if cmd is not None]
    print(warm(src), flush=True)   # page cache warm, as the target is stated (bench/_warm.py)
    after_cp: collections.Counter[str] = collections.Counter()
    prev = None
    for _ in range(a.runs):
        # the slot right after cp -r's output was deleted goes to each command in turn: on the
        # development VM a command run there took 1.63-1.89 s where the same build took
        # 1.30-1.37 s right after its own output was deleted (8 of 8 pairs, commit 141afea), so no
        # command gets that slot every round
        order = min(itertools.permutations(contenders), key=lambda o: _unevenness(_after_cp(after_cp, prev, o)))
        after_cp = _after_cp(after_cp, prev, order)
        prev = order[-1][0]
        print("round:", ", ".join(name for name, _ in order), flush=True)
        for name, cmd in order:
            shutil.rmtree(out, ignore_errors=True)
            os.sync()  # no writeback of the previous output competing with this run
            time.sleep(a.settle)  # nor the file system's background work after deleting it
            res[name].append(run(cmd))
    shutil.rmtree(out, ignore_errors=True)
    print(f"checkpoint: {src}, {size / 2**30:.2f} GiB, one shard; command: {exe}")
    base = statistics.median(r[0] for r in res["cp -r"])
    base_min = min(r[0] for r in res["cp -r"])
    for name, rs in res.items():
        if rs:
            w = statistics.median(r[0] for r in rs)
            lo = min(r[0] for r in rs)
            m = max(r[1] for r in rs)
            print(f"{name:<26} median {w:6.2f} s ({w / base:4.2f}x cp -r)  min {lo:6.2f} s ({lo / base_min:4.2f}x)"
                  f"   peak RSS {m / 2**20:6.0f} MiB   runs: {' '.join(f'{r[0]:.2f}' for r in rs)}"
                  f"   cpu: {' '.join(f'{r[2]:.2f}' for r in rs)}   stolen: {' '.join(f'{r[3]:.2f}' for r in rs)}")


if __name__ == "__main__":
    main()
