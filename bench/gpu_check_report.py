"""gpu_check.sh's last step: the card, the software and every stage's result in ONE JSON.

    python bench/gpu_check_report.py --device cuda --work DIR --out bench/results/gpu_check.json

``DIR`` holds, per stage, what gpu_check.sh left there: ``<stage>.status`` (exit code, seconds,
cap, command: one per line), ``<stage>.log`` (its output) and ``<stage>.json`` (the benchmark's own
JSON, written by the benchmark itself, row by row where it can, so a stage cut short by its cap
still brings the rows it finished). A stage is ``ok`` (exit 0, JSON there), ``timed out`` (its cap
ran out: 124 / 137) or ``failed``; a stage that is not ok carries the end of its log. Nothing here
measures anything: every number comes from a stage, with that stage's ``how``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import torch
import torchvision

STAGES = ("decode", "engine", "engine_r50", "packing", "loader")
TIMED_OUT = (124, 137)  # timeout(1)'s exit codes: the cap ran out (137: killed after the grace)
LOG_TAIL = 3000  # characters of a failed stage's log kept in the JSON


def card(device: str) -> dict:
    """The GPU as torch and nvidia-smi see it, or why there is none."""
    if not device.startswith("cuda"):
        return {"name": None, "why": f"--device {device}: no GPU in this run"}
    if not torch.cuda.is_available():
        return {"name": None, "why": "torch.cuda.is_available() is False"}
    props = torch.cuda.get_device_properties(0)
    capability = ".".join(map(str, torch.cuda.get_device_capability(0)))
    return {"name": torch.cuda.get_device_name(0), "capability": capability,
            "total_memory_bytes": props.total_memory, "multiprocessors": props.multi_processor_count,
            "count": torch.cuda.device_count(), "nvidia_smi": nvidia_smi()}


def nvidia_smi() -> str | None:
    """Driver, memory and clocks from nvidia-smi (None where it is not installed)."""
    if shutil.which("nvidia-smi") is None:
        return None
    query = "name,driver_version,memory.total,clocks.max.sm,power.limit"
    done = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
                          capture_output=True, text=True, timeout=30)
    return done.stdout.strip() or done.stderr.strip()


def software() -> dict:
    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "torchvision": torchvision.__version__, "cuda": torch.version.cuda,
                "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}
    for package in ("numpy", "pillow", "pyarrow", "nvidia-ml-py", "triton"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def stage(work: Path, name: str) -> dict:
    """One stage's status, command, timing and result (see the module docstring)."""
    status_file = work / f"{name}.status"
    if not status_file.is_file():
        return {"status": "not run"}
    rc, seconds, cap, command = status_file.read_text().split("\n", 3)
    entry = {"rc": int(rc), "seconds": float(seconds), "cap_seconds": int(cap),
             "command": command.strip().replace(str(work), "$WORK")}  # no path of this machine
    result_file = work / f"{name}.json"
    result = json.loads(result_file.read_text()) if result_file.is_file() else None
    if entry["rc"] == 0 and result is not None:
        entry["status"] = "ok"
    else:
        entry["status"] = "timed out" if entry["rc"] in TIMED_OUT else "failed"
        log = work / f"{name}.log"
        entry["log_tail"] = log.read_text(errors="replace")[-LOG_TAIL:] if log.is_file() else None
    entry["result"] = result  # partial rows of a stage cut short are kept
    return entry


def summary(stages: dict) -> dict:
    """The headline numbers, copied from the stages' results (where they got that far)."""
    out: dict = {}
    decode = stages["decode"].get("result") or {}
    if "speedups" in decode:
        out["decode_speedups"] = decode["speedups"]
        out["cache_equal"] = {k: decode[k] for k in ("cache_equal", "cache_equal_small") if k in decode}
    engine = stages["engine"].get("result") or {}
    keys = ("arch", "batch_size", "compile", "error", "engine_images_per_s", "plain_images_per_s",
            "ratio", "gpu_busy_pct")
    out["engine_rows"] = [{k: row.get(k) for k in keys} for row in [
        *engine.get("rows", []), *(stages["engine_r50"].get("result") or {}).get("rows", [])]]
    probe = engine.get("probe") or {}
    # What `tuner search` checks a fractional resources.gpu against: the card and the CUDA context.
    out["probe_memory"] = {k: probe.get(k) for k in ("arch", "max_batch_size", "bytes_at_max",
                                                     "device_total_bytes", "context_bytes")}
    packing = stages["packing"].get("result") or {}
    out["packing_aggregate_vs_one_process"] = packing.get("scaling_vs_one_process")
    loader = stages["loader"].get("result") or {}
    # The data path's own ceiling (no model): when a trial's GPU waits, is it the loader?
    out["loader_ceiling"] = {"per_image_ms": loader.get("per_image_ms"), "finish_ms": loader.get("finish_ms"),
                             "batched_crops": loader.get("batched_crops"), "rows": loader.get("rows")}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", required=True)
    parser.add_argument("--work", type=Path, required=True, help="the stages' folder")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--started", type=float, help="the check's start (epoch seconds)")
    parser.add_argument("--command", default="bash bench/gpu_check.sh")
    args = parser.parse_args(argv)
    stages = {name: stage(args.work, name) for name in STAGES}
    report = {"check": "gpu_check", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "command": args.command, "device": args.device,
              "total_seconds": round(time.time() - args.started, 1) if args.started else None,
              "card": card(args.device), "software": software(),
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
              "how": "every number comes from the stage that measured it; see each result's 'how' fields "
                     "and the docstrings of bench/gpu_decode.py, bench/engine_throughput.py (+ engine_trial.py), "
                     "bench/gpu_packing.py and bench/loader_ceiling.py",
              "stages": stages, "summary": summary(stages)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({name: s["status"] for name, s in stages.items()}))
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
