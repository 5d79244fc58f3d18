"""bench/model_costs' FLOP count, which BENCHMARKS' "300 images/s needs ~213 GFLOP/s" rests on."""

import keras
import pytest

from bench.model_costs import forward_gflops


def test_forward_gflops_counts_convs_and_dense_layers_inside_nested_models_too():
    inner = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, padding="same")])
    inputs = keras.Input((8, 8, 3))
    x = inner(inputs)
    x = keras.layers.MaxPooling2D()(x)                        # 4x4x4: no multiply-adds
    x = keras.layers.Conv2D(5, 1)(x)                          # 4*4 positions x 4 x 5
    x = keras.layers.Dense(2)(keras.layers.Flatten()(x))      # 80 x 2
    model = keras.Model(inputs, x)
    macs = 8 * 8 * 3 * 3 * 3 * 4 + 4 * 4 * 4 * 5 + 80 * 2
    assert forward_gflops(model) == pytest.approx(2 * macs / 1e9)
