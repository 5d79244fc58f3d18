"""The published airbench94 trained on the same data copy as our fast_cnn (issue #5).

    python -m bench.airbench_reference DATA [--runs 5] [--workdir DIR]

fast_cnn reaches ~90.5% on the JPEG copy where airbench94 publishes 94.0% on
canonical CIFAR-10. This script answers whether the gap is the data or our
implementation: it trains Keller Jordan's own airbench94 (the `airbench`
package from PyPI, PyTorch, needs a CUDA GPU) on the images `--data` reads,
RUNS times after one warm-up, and prints each run's seconds and its test
accuracy with airbench's own TTA (level 2: flips and 1-pixel shifts), then the
mean and sample standard deviation. The seconds are the CUDA-synchronised wall
clock of the whole `train94()` call: training and whitening init, plus loading
the two `.pt` files onto the GPU and building the network (airbench's own
timer leaves those out), without any evaluation (airbench's own includes the
final TTA pass).

It is a measuring instrument, not part of the product: `airbench`, torch and
torchvision are not in requirements.txt. DATA is anything `--data` accepts
(e.g. the JPEG copy's .tar.gz); the script writes it in airbench's own format
(`cifar10/train.pt`, `cifar10/test.pt` under WORKDIR, default a temporary
folder), since airbench reads the relative path `cifar10`.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cifar import CLASS_NAMES  # noqa: E402
from cifar.data import load_cifar10  # noqa: E402
from cifar.errors import CifarError  # noqa: E402


def write_airbench_data(data, folder: Path) -> None:
    """Save the arrays as airbench's CifarLoader expects: uint8 NHWC images, int64 labels."""
    import torch
    folder.mkdir(parents=True, exist_ok=True)
    for split, x, y in (("train", data.x_train, data.y_train), ("test", data.x_test, data.y_test)):
        torch.save({"images": torch.from_numpy(x.copy()), "labels": torch.from_numpy(y.astype("int64")),
                    "classes": list(CLASS_NAMES)}, folder / f"{split}.pt")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="a local CIFAR-10 copy, as --data takes it")
    parser.add_argument("--runs", type=int, default=5, help="timed trainings after the warm-up (default 5)")
    parser.add_argument("--workdir", help="where cifar10/{train,test}.pt are written "
                                          "(default: a temporary folder, removed at the end)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    try:
        data = load_cifar10(args.data)
    except CifarError as error:
        sys.exit(f"error: {error}")
    try:
        import airbench
        import torch
    except ImportError as error:
        sys.exit(f"error: {error}. This benchmark needs `pip install airbench torch torchvision`.")
    if not torch.cuda.is_available():
        sys.exit("error: airbench94 needs a CUDA GPU and torch sees none.")
    with tempfile.TemporaryDirectory(prefix="airbench-") as scratch:
        workdir = Path(args.workdir or scratch).resolve()
        write_airbench_data(data, workdir / "cifar10")
        caller = Path.cwd()
        os.chdir(workdir)  # airbench's loaders read the relative path 'cifar10'
        try:
            accuracies, seconds = train_runs(airbench, torch, args.runs)
        finally:
            os.chdir(caller)  # and leave the folder before it is removed
    print(f"data: {data.description}, fingerprint {data.fingerprint}")
    spread = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
    print(f"mean test accuracy {statistics.mean(accuracies):.4f}, sd {spread:.4f}, "
          f"range {min(accuracies):.4f}-{max(accuracies):.4f}; train94() {statistics.mean(seconds):.2f} s mean "
          f"({min(seconds):.2f}-{max(seconds):.2f}) over {len(seconds)} runs")
    return 0


def train_runs(airbench, torch, runs: int) -> tuple[list[float], list[float]]:
    """One untimed warm-up (cuDNN autotuning, allocator), then `runs` timed trainings."""
    try:
        version = importlib.metadata.version("airbench")
    except importlib.metadata.PackageNotFoundError:  # on sys.path without its metadata
        version = "(version unknown)"
    print(f"torch {torch.__version__}, airbench {version}, {torch.cuda.get_device_name()}", flush=True)
    test_loader = airbench.CifarLoader("cifar10", train=False, batch_size=2000)
    airbench.train94(verbose=False)
    accuracies, seconds = [], []
    for run in range(runs):
        torch.cuda.synchronize()
        start = time.perf_counter()
        model = airbench.train94(verbose=False)
        torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
        accuracies.append(float(airbench.evaluate(model, test_loader, tta_level=2)))
        print(f"run {run}: {seconds[-1]:.2f} s, test accuracy (TTA) {accuracies[-1]:.4f}", flush=True)
    return accuracies, seconds


if __name__ == "__main__":
    sys.exit(main())
