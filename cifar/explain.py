"""Grad-CAM heatmaps: which part of the image made a model choose a class.

Grad-CAM (Selvaraju et al., 2017) weighs the feature maps of a late
convolutional layer by the mean gradient of the class score over each map
and keeps the positive part. Here:

- The layer is found from the model itself (`target_layer`): the last
  convolution, walking into nested models (transfer backbones), followed
  through the layers that keep its spatial size (batch norm, activation,
  residual add) so the maps are the activations the rest of the network
  reads. A model without any convolution falls back to its last layer with
  an image-shaped output (then Grad-CAM is gradient x input).
- The class score is log p_c minus the mean log-probability over classes,
  which equals the logit z_c minus the mean logit (softmax's normaliser
  cancels), so the saved models need no surgery to expose their logits.
- `fast_cnn` averages six test-time views inside the model (cifar/fast_cnn.py:
  the image, its mirror, and both shifted by one pixel). Its feature maps
  therefore hold six views per image; each view's map is computed, mirrored
  ones are flipped back, and they are summed (the gradient already carries
  each view's weight). The one-pixel shifts are left as they are, a fraction
  of a feature cell.
- Gradients need backend code: `_gradient` is the only function that has
  any (tf.GradientTape on TensorFlow, jax.grad on JAX); other backends get
  an ExplainError saying which ones work. Everything else is keras API.

To read the layer's output and add the probe whose gradient is the map's
gradient, the layer's `call` is wrapped once; the wrapper does nothing
unless this thread is computing a heatmap, so a model shared between
dashboard sessions predicts as before.
"""

from __future__ import annotations

import threading

import keras
import numpy as np
from PIL import Image

from cifar import IMAGE_SHAPE
from cifar.errors import CifarError

CONVOLUTIONS = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D)
_active = threading.local()
_patch_lock = threading.Lock()


class ExplainError(CifarError):
    """A heatmap cannot be computed for this model or backend."""


# ---------------------------------------------------------------- the layer

def _layers_in_order(model, parent=None):
    """(parent, layer) for every layer, depth first, nested models opened."""
    for layer in model.layers:
        if isinstance(layer, keras.Model) or (hasattr(layer, "layers") and layer.layers):
            yield from _layers_in_order(layer, layer)
        else:
            yield parent or model, layer


def _spatial(layer) -> tuple[int, int] | None:
    try:
        shape = tuple(layer.output.shape)
    except (AttributeError, ValueError):
        return None
    return (shape[1], shape[2]) if len(shape) == 4 and shape[1] and shape[1] > 1 else None


def target_layer(model) -> keras.layers.Layer:
    """The layer whose maps Grad-CAM weighs (see the module docstring)."""
    ordered = list(_layers_in_order(model))
    convolutions = [i for i, (_, layer) in enumerate(ordered) if isinstance(layer, CONVOLUTIONS)]
    if not convolutions:
        image_shaped = [i for i, (_, layer) in enumerate(ordered) if _spatial(layer)]
        if not image_shaped:
            raise ExplainError(f"model {model.name} has no layer with an image-shaped output to explain")
        return ordered[image_shaped[-1]][1]
    index = convolutions[-1]
    parent, layer = ordered[index]
    size = _spatial(layer)
    while index + 1 < len(ordered) and ordered[index + 1][0] is parent and _spatial(ordered[index + 1][1]) == size:
        index += 1
    return ordered[index][1]


def _probe(layer) -> None:
    """Wrap `layer.call` once: while this thread explains with it, record the
    output (first pass) or add the probe tensor to it (gradient pass)."""
    with _patch_lock:
        if getattr(layer, "_cifar_probe", False):
            return
        original = layer.call

        def call(*args, **kwargs):
            out = original(*args, **kwargs)
            if getattr(_active, "layer", None) is not layer:
                return out
            if _active.delta is None:
                _active.features = keras.ops.convert_to_numpy(out)
                return out
            return out + keras.ops.cast(_active.delta, out.dtype)

        layer.call = call
        layer._cifar_probe = True


# ---------------------------------------------------------------- gradients

def _gradient(function, delta: np.ndarray) -> np.ndarray:
    """d function(delta) / d delta, with the backend's own autodiff."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf
        delta = tf.convert_to_tensor(delta)
        with tf.GradientTape() as tape:
            tape.watch(delta)
            value = function(delta)
        return np.asarray(tape.gradient(value, delta))
    if backend == "jax":
        import jax
        return np.asarray(jax.grad(function)(jax.numpy.asarray(delta)))
    raise ExplainError(f"heatmaps need gradients, written here for the TensorFlow and JAX backends only; "
                       f"this process runs Keras on {backend}. Start it with KERAS_BACKEND=tensorflow or jax.")


def _score(model, images, classes):
    """Sum over images of log p_c - mean log p (= logit_c - mean logit)."""
    ops = keras.ops
    log_p = ops.log(ops.maximum(ops.cast(model(images, training=False), "float32"), 1e-30))
    chosen = ops.sum(log_p * ops.one_hot(classes, log_p.shape[-1]), axis=-1)
    return ops.sum(chosen - ops.mean(log_p, axis=-1))


def grad_cam(model, images: np.ndarray, classes) -> np.ndarray:
    """Heatmaps (N, h, w) in [0, 1] at the layer's resolution, one per uint8 image
    (N, 32, 32, 3) (or one image (32, 32, 3)), for `classes` (an int, or one per image)."""
    images = np.asarray(images)
    single = images.shape == IMAGE_SHAPE
    images = images[None] if single else images
    classes = np.broadcast_to(np.asarray(classes, dtype="int32"), (len(images),)).copy()
    layer = target_layer(model)
    _probe(layer)
    _active.layer, _active.delta = layer, None
    try:
        model(images, training=False)  # records the maps
        features = _active.features

        def score(delta):
            _active.delta = delta
            return _score(model, images, classes)
        gradients = _gradient(score, np.zeros_like(features))
    finally:
        _active.layer = _active.delta = _active.features = None
    weights = gradients.astype(np.float64).mean(axis=(1, 2), keepdims=True)
    maps = np.maximum((weights * features.astype(np.float64)).sum(axis=-1), 0)
    maps = _merge_views(model, maps, len(images))
    peak = maps.max(axis=(1, 2), keepdims=True)
    maps = np.divide(maps, peak, out=np.zeros_like(maps), where=peak > 0)
    return maps[0] if single else maps


def _merge_views(model, maps: np.ndarray, n_images: int) -> np.ndarray:
    """One map per image from fast_cnn's test-time views (see the module docstring)."""
    views = len(maps) // n_images
    if views == 1:
        return maps
    from cifar.fast_cnn import TTAExpand
    if not any(isinstance(layer, TTAExpand) for _, layer in _layers_in_order(model)):
        raise ExplainError(f"model {model.name} turns {n_images} images into {len(maps)} feature maps "
                           "and its views are unknown; heatmaps cover fast_cnn's test-time views only")
    stacked = maps.reshape(views, n_images, *maps.shape[1:])
    # TTAExpand's order: image, mirror, then both shifted up-left, then both down-right.
    return sum(view[:, :, ::-1] if v % 2 else view for v, view in enumerate(stacked))


# ---------------------------------------------------------------- pictures

_COLOURS = np.array([[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66],
                     [245, 125, 21], [250, 193, 39], [252, 255, 164]], dtype=float)  # inferno-like


def colour_map(values: np.ndarray) -> np.ndarray:
    """[0, 1] values -> uint8 RGB, dark (nothing) to bright yellow (most)."""
    stops = np.linspace(0, 1, len(_COLOURS))
    return np.stack([np.interp(values, stops, _COLOURS[:, ch]) for ch in range(3)], axis=-1).astype(np.uint8)


def upscale(heatmap: np.ndarray, side: int) -> np.ndarray:
    """Bilinear resize of an (h, w) map to (side, side), kept in [0, 1]."""
    resized = Image.fromarray(np.asarray(heatmap, dtype=np.float32), mode="F").resize(
        (side, side), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(resized), 0, 1)


def overlay(image: np.ndarray, heatmap: np.ndarray, side: int = 128, opacity: float = 0.75) -> np.ndarray:
    """The image enlarged to side x side (nearest, pixels stay visible) with the
    heatmap's colour laid over it in proportion to the heat: cold areas show the image as is."""
    enlarged = np.asarray(Image.fromarray(image).resize((side, side), Image.Resampling.NEAREST), dtype=float)
    heat = upscale(heatmap, side)
    alpha = opacity * heat[..., None]
    blended = (1 - alpha) * enlarged + alpha * colour_map(heat)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def explain(model, image: np.ndarray, class_index: int, side: int = 128) -> np.ndarray:
    """One uint8 (32, 32, 3) image -> its Grad-CAM overlay for `class_index`, (side, side, 3)."""
    return overlay(image, grad_cam(model, image, class_index), side)
