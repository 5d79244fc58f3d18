"""The CLI drops TensorFlow's native start-up lines from stderr, and only those."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

START_UP = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    "I0000 00:00:1795992214.341829   13953 port.cc:153] oneDNN custom operations are on.\n"
    "I0000 00:00:1795992214.342160   13953 cudart_stub.cc:31] Could not find cuda drivers on your machine.\n"
    "To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild TensorFlow.\n"
    "E0000 00:00:1795992221.035949   13953 cuda_platform.cc:52] failed call to cuInit: UNKNOWN ERROR (303)\n"
)
REAL = "E0000 00:00:1795992221.035949   13953 saver.cc:12] could not open checkpoint\nsomething else broke\n"


def test_start_up_lines_are_dropped_and_real_errors_still_show():
    code = ("import os, sys; from cifar.cli import _native_stderr_filtered\n"
            "print('before', file=sys.stderr, flush=True)\n"
            f"with _native_stderr_filtered(): os.write(2, {(START_UP + REAL).encode()!r})\n"
            "print('after', file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert result.stderr == "before\n" + REAL + "after\n"
