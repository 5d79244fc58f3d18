"""Training speed per model, and the share of time the input pipeline costs.

For each model it times N training steps two ways, after a warm-up, one
after the other in each of `--repeats` rounds:
  pipeline: exactly what `cifar.train` does per epoch: the model's per-epoch
            data augmentation if it has one (fast_cnn), a seeded permutation
            of the uint8 arrays, then `model.fit(..., shuffle=False)`;
  compute:  `train_on_batch` on one batch already converted to a tensor,
            i.e. training with the input pipeline taken away.
Images/s are the best round of each (the least disturbed on a shared
machine). The pipeline share is 1 - compute_time / pipeline_time within each
round, whose two measurements see the same machine load, and its median over
the rounds (negative means noise); one round's share is only as good as the
machine is quiet. (This replaces bench/pipeline_share.py, which interleaved
the same two measurements for cnn_baseline, plus two other ways of feeding
that training does not use.)

Usage (from the repository root):
  python bench/train_speed.py --models cnn_baseline cnn_regularized --steps 60
  python bench/train_speed.py --models vgg16_transfer --input-size 64 --steps 10
  python bench/train_speed.py --precision mixed_bfloat16 --models cnn_baseline --steps 10
Prints one JSON line per model (and appends it to --out if given).
"""

from __future__ import annotations

import argparse
import json
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
from cifar.environment import hardware  # noqa: E402
from cifar.models import build_model, get_spec  # noqa: E402
from cifar.train import compile_for_training  # noqa: E402


def measure(name: str, steps: int, precision: str, input_size: int | None, batch_size: int | None,
            repeats: int = 3, augment: bool | None = None) -> dict:
    keras.config.set_dtype_policy(precision)
    spec = get_spec(name)
    overrides = {"batch_size": batch_size, "augment": augment}
    if spec.is_transfer:
        overrides.update(weights="none", input_size=input_size)
    config = resolve_config(name, **overrides)
    model = build_model(name, input_size=config.input_size, weights=config.weights,
                        augment=config.augment, seed=0)
    if spec.prepare:
        spec.prepare(model, np.random.default_rng(1).integers(0, 256, (256, 32, 32, 3), dtype=np.uint8))
    compile_for_training(model, config, steps_per_epoch=steps)
    rng = np.random.default_rng(0)
    n = config.batch_size * steps
    x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, n)]

    warm = min(n, config.batch_size * 3)
    model.fit(x[:warm], y[:warm], batch_size=config.batch_size, epochs=1, shuffle=False, verbose=0)
    xb = keras.ops.convert_to_tensor(x[:config.batch_size])
    yb = keras.ops.convert_to_tensor(y[:config.batch_size])
    model.train_on_batch(xb, yb)

    # Alternate the two measurements: on a shared 2-core machine the spread
    # between rounds is larger than the pipeline's cost, so speeds keep each
    # one's best round, and the share compares the two within a round.
    pipeline, compute = [], []  # seconds of each round
    for repeat in range(repeats):
        start = time.perf_counter()
        images = spec.epoch_augment(x, repeat, 0) if spec.epoch_augment and config.augment else x
        order = np.random.default_rng([0, repeat]).permutation(n)
        model.fit(images[order], y[order], batch_size=config.batch_size, epochs=1, shuffle=False, verbose=0)
        pipeline.append(time.perf_counter() - start)
        start = time.perf_counter()
        for _ in range(steps):
            model.train_on_batch(xb, yb)
        compute.append(time.perf_counter() - start)
    shares = [1 - c / p for p, c in zip(pipeline, compute)]
    return {"model": name, "precision": precision, "batch_size": config.batch_size,
            "input_size": config.input_size, "augment": config.augment, "steps": steps, "repeats": repeats,
            "train_images_per_s": round(n / min(pipeline), 1),
            "compute_only_images_per_s": round(n / min(compute), 1),
            "pipeline_share": round(statistics.median(shares), 3),
            "pipeline_share_rounds": [round(share, 3) for share in shares],
            "backend": keras.backend.backend(), "machine": hardware()["label"],
            "date": time.strftime("%Y-%m-%d")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["cnn_baseline", "cnn_regularized"])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--precision", default="float32")
    parser.add_argument("--input-size", type=int, default=None, help="transfer models (default 224)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3,
                        help="rounds of both measurements: best images/s, median pipeline share")
    parser.add_argument("--no-augment", dest="augment", action="store_false", default=None,
                        help="without the recipe's augmentation (default: the recipe's setting)")
    parser.add_argument("--out", type=Path, help="append JSON lines here")
    args = parser.parse_args()
    for name in args.models:
        row = measure(name, args.steps, args.precision, args.input_size, args.batch_size, args.repeats,
                      args.augment)
        line = json.dumps(row)
        print(line, flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(line + "\n")


if __name__ == "__main__":
    main()
