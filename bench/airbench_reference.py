"""The published airbench94 trained on the same data copy as our fast_cnn (issue #5).

    python -m bench.airbench_reference DATA [--runs 5] [--workdir DIR]

fast_cnn reaches ~90.5% on the JPEG copy where airbench94 publishes 94.0% on
canonical CIFAR-10. This script answers whether the gap is the data or our
implementation: it trains Keller Jordan's own airbench94 (the `airbench`
package from PyPI, PyTorch, needs a CUDA GPU) on the images `--data` reads,
RUNS times after one warm-up, and prints each run's training seconds (CUDA
synchronised wall clock, whitening init included, evaluation excluded, as
airbench times itself) and its test accuracy with airbench's own TTA (level 2:
flips and 1-pixel shifts), then the mean and sample standard deviation.

It is a measuring instrument, not part of the product: `airbench`, torch and
torchvision are not in requirements.txt. DATA is anything `--data` accepts
(e.g. the JPEG copy's .tar.gz); the script writes it in airbench's own format
(`cifar10/train.pt`, `cifar10/test.pt` under WORKDIR, default a temporary
folder), since airbench reads the relative path `cifar10`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cifar import CLASS_NAMES  # noqa: E402
from cifar.data import load_cifar10  # noqa: E402


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
    parser.add_argument("--workdir", help="where cifar10/{train,test}.pt are written (default: a temporary folder)")
    args = parser.parse_args(argv)
    try:
        import airbench
        import torch
    except ImportError as error:
        sys.exit(f"error: {error}. This benchmark needs `pip install airbench torch torchvision`.")
    if not torch.cuda.is_available():
        sys.exit("error: airbench94 needs a CUDA GPU and torch sees none.")

    data = load_cifar10(args.data)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="airbench-"))
    write_airbench_data(data, workdir / "cifar10")
    os.chdir(workdir)  # airbench's test loader reads the relative path 'cifar10'
    print(f"data: {data.description}, fingerprint {data.fingerprint}; torch {torch.__version__}, "
          f"airbench {getattr(airbench, '__version__', '0.1.8 (no __version__)')}, {torch.cuda.get_device_name()}")

    test_loader = airbench.CifarLoader("cifar10", train=False, batch_size=2000)
    airbench.train94(verbose=False)  # warm-up: cuDNN autotuning and allocator, not counted
    seconds, accuracies = [], []
    for run in range(args.runs):
        torch.cuda.synchronize()
        start = time.perf_counter()
        model = airbench.train94(verbose=False)
        torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
        accuracies.append(float(airbench.evaluate(model, test_loader, tta_level=2)))
        print(f"run {run}: {seconds[-1]:.2f} s training, test accuracy (TTA) {accuracies[-1]:.4f}", flush=True)
    spread = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
    print(f"mean test accuracy {statistics.mean(accuracies):.4f}, sd {spread:.4f}, "
          f"range {min(accuracies):.4f}-{max(accuracies):.4f}; training {statistics.mean(seconds):.2f} s mean "
          f"({min(seconds):.2f}-{max(seconds):.2f}) over {len(seconds)} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
