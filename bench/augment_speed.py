"""Cost of the study's augmentation layers, one by one, on the current backend.

    KERAS_BACKEND=jax python -m bench.augment_speed [--batch-size 64] [--steps 50]

cnn_regularized trained at 255 images/s on an H200 with JAX, and 30,000
without its augmentation layers, before `allow_jit_on_jax` (BENCHMARKS).
This times each layer of the registry's augmentation block
(`cifar.models.study_augmentation`: RandomRotation, RandomFlip, RandomTranslation)
and the whole block the way training runs them: inside a compiled
`train_on_batch` of a tiny model (layer -> global average pooling ->
Dense(10)), against the same model with no augmentation: as Keras compiles it
by default and, on JAX, after `cifar.models.allow_jit_on_jax` (what training
does), since Keras never jits a model holding these layers. Prints one line
per variant: milliseconds per batch (best of 3 timed blocks, after a warm-up),
the extra milliseconds the layer adds and the images/s that leaves.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from cifar.models import allow_jit_on_jax, study_augmentation  # noqa: E402


def time_layer(layer: keras.layers.Layer | None, x: np.ndarray, y: np.ndarray, steps: int,
               allow_jit: bool) -> float:
    """Milliseconds per train_on_batch of `layer` -> pooling -> Dense(10)."""
    inputs = keras.Input(x.shape[1:])
    hidden = layer(inputs) if layer is not None else inputs
    model = keras.Model(inputs, keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(hidden)))
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    if allow_jit:
        allow_jit_on_jax(model)
    model.train_on_batch(x, y)  # compile
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(steps):
            loss = model.train_on_batch(x, y)
        float(np.asarray(loss))  # wait for the device
        best = min(best, (time.perf_counter() - start) / steps)
    return best * 1e3


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=64, help="cnn_regularized's batch (default 64)")
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    x = rng.random((args.batch_size, 32, 32, 3), dtype=np.float32)
    y = rng.integers(0, 10, args.batch_size)
    print(f"backend {keras.backend.backend()}, keras {keras.__version__}, batch {args.batch_size}")
    variants = [False, True] if keras.backend.backend() == "jax" else [False]
    base = time_layer(None, x, y, args.steps, allow_jit=False)
    print(f"  {'no augmentation':<40} {base:8.2f} ms/batch")
    count = len(study_augmentation().layers)
    for index in list(range(count)) + [None]:  # each layer alone (a fresh block each time), then all
        for allow_jit in variants:
            block = study_augmentation(seed=0)
            layer = block if index is None else block.layers[index]
            name = ("whole block" if index is None else layer.__class__.__name__) + \
                (", allow_jit_on_jax" if allow_jit else ", Keras default")
            ms = time_layer(layer, x, y, args.steps, allow_jit)
            print(f"  {name:<40} {ms:8.2f} ms/batch  (+{ms - base:.2f} ms, "
                  f"{args.batch_size / (ms / 1e3):,.0f} images/s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
