"""What each registry model costs to ship and to run: parameters, model file
size, batched evaluation images/s and single-image prediction latency.

    python -m bench.model_costs [--models NAME ...] [--images 1000] [--transfer-images 64]

Each model is built as the training code ships it (float32, no optimizer,
transfer models with random weights: the file size and speed do not depend
on the weight values), saved to a temporary .keras file, then timed with the
same functions a run's evaluation uses (cifar.evaluate): `predict` over
random uint8 images in batches of 256 after a warm-up, and the median of 30
`predict_on_batch` calls on one image. Prints one JSON line per model.
Training images/s is bench/train_speed.py's job.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from cifar.environment import hardware  # noqa: E402
from cifar.evaluate import measure_throughput, single_image_latency_ms  # noqa: E402
from cifar.models import REGISTRY, build_model, count_params, get_spec, leaf_layers  # noqa: E402


def forward_gflops(model: keras.Model) -> float:
    """Multiply-adds x 2 of the convolution and dense layers for one image (one
    view: fast_cnn's test-time augmentation runs six). Sets a floor on what any
    implementation needs: training costs about three forward passes."""
    macs = 0
    for layer in leaf_layers(model):
        if isinstance(layer, keras.layers.Conv2D):
            kh, kw, cin, cout = layer.kernel.shape
            _, h, w, _ = layer.output.shape
            macs += h * w * kh * kw * cin * cout
        elif isinstance(layer, keras.layers.Dense):
            macs += int(np.prod(layer.kernel.shape))
    return 2 * macs / 1e9


def measure(name: str, n_images: int) -> dict:
    keras.config.set_dtype_policy("float32")
    spec = get_spec(name)
    model = build_model(name, weights="none" if spec.is_transfer else None, seed=0)
    images = np.random.default_rng(0).integers(0, 256, (n_images, 32, 32, 3), dtype=np.uint8)
    if spec.prepare:
        spec.prepare(model, images)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.keras"
        model.save(path)
        file_bytes = path.stat().st_size
    _, images_per_s = measure_throughput(model, images, batch_size=256)
    params = count_params(model)
    return {"model": name, "input_size": spec.defaults.input_size,
            "params_total": params["total"], "params_trainable": params["trainable"],
            "forward_gflops": round(forward_gflops(model), 3), "model_file_mb": round(file_bytes / 1e6, 2),
            "eval_images": n_images,
            "eval_images_per_s": round(images_per_s, 1),
            "latency_ms": round(single_image_latency_ms(model, images[0]), 1),
            "backend": keras.backend.backend(), "machine": hardware()["label"],
            "date": time.strftime("%Y-%m-%d")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(REGISTRY))
    parser.add_argument("--images", type=int, default=1000, help="images timed per CIFAR-sized model")
    parser.add_argument("--transfer-images", type=int, default=64, help="images timed per 224 px transfer model")
    args = parser.parse_args()
    for name in args.models:
        n = args.transfer_images if get_spec(name).is_transfer else args.images
        print(json.dumps(measure(name, n)), flush=True)


if __name__ == "__main__":
    main()
