"""What machine and software a run used: saved with every run's metadata."""

from __future__ import annotations

import functools
import os
import platform
import shutil
import subprocess
from importlib import metadata as importlib_metadata
from pathlib import Path

_PACKAGES = ("keras", "tensorflow", "jax", "torch", "numpy", "pandas", "scikit-learn", "pillow")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_names() -> list[str]:
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return [line.strip() for line in out.stdout.splitlines() if line.strip()]
    except (OSError, subprocess.SubprocessError):
        return []


def git_commit() -> str | None:
    repo = Path(__file__).resolve().parent.parent
    try:
        result = subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=repo,
                                capture_output=True, text=True, timeout=5)
        commit = result.stdout.strip() if result.returncode == 0 else ""
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (commit + ("-dirty" if dirty else "")) if commit else None


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            found[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            pass
    return found


@functools.lru_cache(maxsize=1)
def hardware() -> dict:
    gpus = gpu_names()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    label = f"{cores}-core {cpu_model()}" + (f" + {', '.join(gpus)}" if gpus else "")
    return {"cpu": cpu_model(), "cores": cores, "gpus": gpus, "label": label,
            "hostname": platform.node()}


def describe_environment() -> dict:
    import keras
    return {"hardware": hardware(), "backend": keras.backend.backend(), "versions": versions(),
            "git_commit": git_commit(), "platform": platform.platform()}
