"""``convert``: read a checkpoint's headers, let the target format's writer plan it (typed actions,
:mod:`.plan`; a safetensors writer starts copying the source's first tensors meanwhile:
:class:`.stream.Early`), stream every action's bytes through the one encoder (:mod:`.encode`) into
a hidden temporary output, check the output against the source (:mod:`.check`: re-read through the
target's reader, each tensor as soon as its bytes are final, while the kernel copies of later ones
still run: :class:`.stream.Progress`), and publish it atomically (:mod:`.publish`). No step here
knows which format is which: formats register their writers (``FormatSpec.writer``).

Everything a conversion holds (open files, cached scalars, the requantization report) lives in
objects it creates, so conversions in one process never share state.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from typing import Any

from nvfp4tools.errors import FormatError, UnsupportedError, UsageError

from .canon import View
from .options import Options
from .plan import Action, Kind, Plan, RowSlice

__all__ = ["Action", "Kind", "Options", "Plan", "RowSlice", "convert", "make_plan", "targets"]

REPORT_FILE = "nvfp4tools_conversion_report.json"


def targets() -> list[str]:
    """Formats nvfp4tools can write."""
    from nvfp4tools import formats
    return [n for n in formats.names() if formats.get(n).writer is not None]


def _writer(to: str):
    from nvfp4tools import formats

    spec = formats.get(to) if to.lower().replace("_", "-") in formats.names() else None
    if spec is None or spec.writer is None:
        raise UsageError(f"unknown target format {to!r}", hint=f"targets: {', '.join(targets())}")
    return spec.writer()


# reader findings (formats/_assemble.py) that mean tensors are missing: no conversion of them is exact
BROKEN_SOURCE = ("orphan_scale", "missing_scale")


def make_plan(src, opts: Options, view: View | None = None) -> Plan:
    """The target writer's plan for SRC (reads only headers and per-tensor scalars)."""
    if opts.quantize is not None and not opts.allow_lossy:
        raise UsageError("--quantize requantizes weights: pass --allow-lossy as well")
    broken = next((f for f in src.findings if f.code in BROKEN_SOURCE), None)
    if broken is not None:
        # scales without their weight, or a quantized weight without its scales: whatever the
        # writer made of them, the output would be as broken (and its own inspect refuses it)
        raise FormatError(f"{src.source}: {broken.message}",
                          hint="the checkpoint is incomplete: re-export it, or restore the missing tensors")
    transposed = next((t for t in src.tensors.values() if any(p.transposed for p in t.parts)), None)
    if transposed is not None:
        # the 4-bit blocks of a tensor stored [.., in, out] run across the other axis of every target's
        # layout, and no target format has a name for that layout: refused rather than re-laid out
        raise UnsupportedError(f"{src.source}: '{transposed.name}' is stored transposed ([.., in/2, out], gpt-oss "
                               "experts as ModelOpt exports them); converting this layout is not supported",
                               hint="inspect, verify and estimate read it; convert the BF16 original instead")
    own = view is None
    view = view or View(src)
    try:
        return _writer(opts.to).plan(src, opts, view)   # (a writer per call: writers hold no state)
    finally:
        if own:
            view.close()


def convert(src_path: str, dst: str, to: str, *, experts: str | None = None, allow_lossy: bool = False,
            dry_run: bool = False, force: bool = False, max_shard_bytes: int | None = None,
            quantize: str | None = None, verify: str = "sampled") -> dict[str, Any]:
    """Convert SRC_PATH into DST (see the module doc); returns the report."""
    from nvfp4tools import formats

    from . import publish
    from .stream import Progress

    opts = Options(to, experts, allow_lossy, quantize, max_shard_bytes, verify)
    writer = _writer(to)
    publish.check_destination(src_path, dst, force, suffix=writer.suffix, existing=not dry_run)
    src = formats.read(src_path)
    view = View(src)
    try:
        if dry_run:
            return make_plan(src, opts, view).as_dict()
        publish.remove_stale(dst)
        tmp = publish.temp_path_for(dst)
        lossy: list[dict[str, Any]] = []
        early = progress = None
        restore_sigterm = publish.terminate_as_interrupt()  # a cancelled CI job cleans up like Ctrl-C
        try:
            # the source's first tensors start copying into the output while the plan is made (a
            # writer's begin: stream.Early), then the writer returns while the last file's bytes are
            # still being copied (Progress: overlap); the report, the re-read of the output and the
            # check of every tensor whose bytes are final run meanwhile, and publishing waits for the end
            begin = getattr(writer, "begin", None)
            early = begin(src, view, tmp, opts) if begin is not None else None
            p = make_plan(src, opts, view)
            progress = Progress(lambda: sum(a.nbytes for a in p.actions), overlap=True)
            files = writer.write(p, view, tmp, opts, lossy, progress, **({"early": early} if early else {}))
            report = p.as_dict()
            folder = writer.suffix is None
            out = formats.read(tmp, to)
            from . import check
            report["verified_tensors"] = check.verify_output(p, view, out, verify, ready=progress.ready)
            progress.settle()
            progress.close()
            report["verification"] = verify
            if lossy:
                # a NaN or Inf error figure (the source weight held NaN) is null: the report is strict
                # JSON, written below before anything is published, and printed by --format json after
                report["lossy"] = lossy = _json_safe(lossy)
                if folder:
                    report["report_file"] = REPORT_FILE
                    with open(os.path.join(tmp, REPORT_FILE), "w") as fh:
                        json.dump({"schema": "nvfp4tools/conversion-report/v1", "source": src.source, "to": to,
                                   "tensors": lossy}, fh, indent=1, allow_nan=False)
            if folder:
                report["copied"] = sorted(set(os.listdir(tmp)) - set(files) - {REPORT_FILE, "config.json",
                                                                                "hf_quant_config.json",
                                                                                "model.safetensors.index.json"})
            publish.publish(tmp, dst)
        except BaseException:
            try:
                if early is not None:
                    early.abort()
            finally:
                if progress is not None:
                    progress.settle(abort=True)
            if os.path.isdir(tmp) and not os.path.islink(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
            elif os.path.lexists(tmp):
                os.remove(tmp)
            raise
        finally:
            restore_sigterm()
        report["destination"] = dst
        report["files"] = [os.path.basename(dst)] if writer.suffix else files
        return report
    finally:
        view.close()


def _json_safe(obj: Any) -> Any:
    """OBJ with every non-finite float replaced by None (JSON has no NaN or Infinity)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj
