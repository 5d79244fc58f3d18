"""Input-pipeline cost, measured in one process with the feeding methods interleaved.

Trains cnn_baseline (or --model) on the same N steps four ways, round-robin,
`--repeats` times, and prints images/s of each round:
  arrays       what cifar.train does: uint8 arrays through model.fit
  generator    a Python generator of batch slices through model.fit
  tensor       train_on_batch on one batch already converted to a tensor
               (no input pipeline at all)
  numpy_slices train_on_batch on numpy slices
The pipeline share is 1 - arrays/tensor, per round and as the median.

Usage: python bench/pipeline_share.py --steps 60 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from cifar.config import resolve_config  # noqa: E402
from cifar.models import build_model  # noqa: E402
from cifar.train import compile_for_training  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="cnn_baseline")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    config = resolve_config(args.model)
    model = build_model(args.model, seed=0)
    compile_for_training(model, config)
    bs, n = config.batch_size, config.batch_size * args.steps
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    y = np.eye(10, dtype="float32")[rng.integers(0, 10, n)]

    def batches():
        while True:
            for i in range(0, n, bs):
                yield x[i:i + bs], y[i:i + bs]
    generator = batches()
    xb, yb = keras.ops.convert_to_tensor(x[:bs]), keras.ops.convert_to_tensor(y[:bs])
    methods = {
        "arrays": lambda: model.fit(x, y, batch_size=bs, shuffle=False, verbose=0),
        "generator": lambda: model.fit(generator, steps_per_epoch=args.steps, verbose=0),
        "tensor": lambda: [model.train_on_batch(xb, yb) for _ in range(args.steps)],
        "numpy_slices": lambda: [model.train_on_batch(x[i:i + bs], y[i:i + bs]) for i in range(0, n, bs)],
    }
    model.fit(x[:3 * bs], y[:3 * bs], batch_size=bs, verbose=0)  # warm-up: trace every path once
    model.fit(generator, steps_per_epoch=3, verbose=0)
    model.train_on_batch(xb, yb)
    shares = []
    for repeat in range(args.repeats):
        speeds = {}
        for name, run in methods.items():
            start = time.perf_counter()
            run()
            speeds[name] = n / (time.perf_counter() - start)
        shares.append(1 - speeds["arrays"] / speeds["tensor"])
        print(f"round {repeat + 1}: " + "  ".join(f"{k} {v:.1f}" for k, v in speeds.items())
              + f"  pipeline share {shares[-1]:+.1%}", flush=True)
    print(f"median pipeline share over {args.repeats} rounds: {statistics.median(shares):+.1%}")


if __name__ == "__main__":
    main()
