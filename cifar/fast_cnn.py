"""`fast_cnn`: an airbench94-style network and recipe, written with the keras API.

Follows the published recipe of Keller Jordan's airbench94 (94% on CIFAR-10 in
under 10 epochs) and its paper, in our own code:
- a frozen 2x2 patch-whitening first layer computed from training images
  (eigenvectors of the patch covariance, and their negatives: 24 filters);
- three conv groups (64/256/256 wide) of conv, max pool, BN, GELU, conv, BN,
  GELU; convolutions without bias, identity-initialised on their first input
  channels; BatchNorm with its scale frozen at 1 and fast momentum (0.6);
- max pool, linear layer scaled by 1/9; label smoothing 0.2;
- Nesterov SGD (momentum 0.85), weight decay, and airbench's learning-rate
  triangle (`WarmupLinearDecay`: linear warm-up from 0.2x to the peak over
  23% of the steps, then linear decay to 0.07x); airbench's "lookahead"
  (`LookaheadSGD`: every 5 steps the weights move to a moving average whose
  weight grows as (step/total)^3);
- alternating flips (`epoch_images`: each image gets a random flip in the
  first epoch and the opposite one every other epoch, so every two epochs
  show both sides of every image) and random 2-pixel translation with
  mirror padding, applied to the data once per epoch; test-time
  augmentation with flips and 1-pixel shifts (inside the model, so every
  caller gets it).

Keras has no per-parameter learning rates, so BN biases get their x64
learning rate through a x8 reparameterisation (`ScaledBias`), and the last
layer uses PyTorch's default init (uniform, bound 1/sqrt(fan_in)) as airbench
does. Deviations from airbench94, all listed in docs/BENCHMARKS.md: a frozen
whitening bias (airbench trains it for 3 epochs), BatchNorm statistics
outside the lookahead average, no copy-back of the slow weights after each
epoch, and 10 full epochs (490 steps, against airbench's 476). The accuracy
this reaches here is measured in docs/BENCHMARKS.md, not assumed.
"""

from __future__ import annotations

import contextlib

import keras
import numpy as np
from keras import layers, ops

from cifar import IMAGE_SHAPE, NUM_CLASSES

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
WIDTHS = (64, 256, 256)
WHITEN_PATCH = 2
WHITEN_IMAGES = 5000
# Test-time variants: the image, its mirror, and both shifted by one pixel
# up-left and down-right; the unshifted pair weighs as much as the four others.
TTA_WEIGHTS = (0.25, 0.25, 0.125, 0.125, 0.125, 0.125)
TRANSLATE_PIXELS = 2


def pytorch_default_init() -> keras.initializers.Initializer:
    """PyTorch's default conv and linear init (uniform, bound 1/sqrt(fan_in)), as airbench uses."""
    return keras.initializers.VarianceScaling(1 / 3, "fan_in", "uniform")


@keras.saving.register_keras_serializable(package="cifar")
class PartialIdentity(keras.initializers.Initializer):
    """He-uniform kernel whose first `in_channels` filters are identities (Dirac)."""

    def __call__(self, shape, dtype=None):
        kh, kw, cin, cout = shape
        kernel = pytorch_default_init()(shape, dtype=dtype)
        eye = np.zeros(shape, dtype="float32")
        for i in range(min(cin, cout)):
            eye[kh // 2, kw // 2, i, i] = 1.0
        mask = np.ones(shape, dtype="float32")
        mask[:, :, :, :min(cin, cout)] = 0.0
        return kernel * ops.convert_to_tensor(mask, dtype) + ops.convert_to_tensor(eye, dtype)

    def get_config(self):
        return {}


@keras.saving.register_keras_serializable(package="cifar")
class ScaledBias(layers.Layer):
    """A per-channel bias stored divided by `scale`: its effective learning rate
    is scale**2 times the optimizer's (airbench trains BN biases 64x faster)."""

    def __init__(self, scale: float = 8.0, **kwargs):
        super().__init__(**kwargs)
        self.scale = scale

    def build(self, input_shape):
        self.bias = self.add_weight(shape=(input_shape[-1],), initializer="zeros", name="bias")

    def call(self, inputs):
        return inputs + ops.cast(self.bias * self.scale, inputs.dtype)

    def get_config(self):
        return {**super().get_config(), "scale": self.scale}


class _TTALayer(layers.Layer):
    """`active` is read when predict is traced: flip it only through `single_view`."""

    active = True

    def compute_output_shape(self, input_shape):
        # The variants change only the batch size, which is unknown (None)
        # whenever Keras infers shapes. Saying so spares the JAX backend from
        # tracing a reshape of a symbolic batch into (6, -1, 10), which it
        # cannot divide.
        return input_shape


@contextlib.contextmanager
def single_view(model: keras.Model):
    """Predict without test-time augmentation inside this block (cheaper: used
    for the per-epoch test accuracy of `--track-test`)."""
    tta = [layer for layer in model.layers if isinstance(layer, _TTALayer)]
    if not tta:
        yield model
        return
    for layer in tta:
        layer.active = False
    model.predict_function = None  # retrace without the variants
    try:
        yield model
    finally:
        for layer in tta:
            layer.active = True
        model.predict_function = None


@keras.saving.register_keras_serializable(package="cifar")
class TTAExpand(_TTALayer):
    """At inference, stack the test-time variants of a batch along the batch axis."""

    def call(self, images, training=None):
        if training or not self.active:
            return images
        flipped = ops.flip(images, axis=2)
        padded = ops.pad(ops.concatenate([images, flipped], axis=0),
                         [[0, 0], [1, 1], [1, 1], [0, 0]], mode="reflect")
        up_left, down_right = padded[:, :-2, :-2, :], padded[:, 2:, 2:, :]
        return ops.concatenate([images, flipped, up_left, down_right], axis=0)


@keras.saving.register_keras_serializable(package="cifar")
class TTAMerge(_TTALayer):
    """At inference, the weighted mean of the variants' logits (undoes TTAExpand)."""

    def call(self, logits, training=None):
        if training or not self.active:
            return logits
        variants = ops.reshape(logits, (len(TTA_WEIGHTS), -1, logits.shape[-1]))
        weights = ops.reshape(ops.convert_to_tensor(TTA_WEIGHTS, logits.dtype), (-1, 1, 1))
        return ops.sum(variants * weights, axis=0)


@keras.saving.register_keras_serializable(package="cifar")
class LookaheadSGD(keras.optimizers.SGD):
    """Nesterov SGD with airbench94's lookahead: every `every` steps the weights
    are averaged into a slow copy, avg <- rho*avg + (1-rho)*w, and then reset
    to it, w <- avg, with rho = base**every * (step/total_steps)**power: no
    damping early on, strong smoothing at the end. Built on Keras' EMA hooks
    (use_ema with an overwrite every `every` steps), with keras.ops only, so
    it runs on every backend."""

    def __init__(self, total_steps: int, every: int = 5, base: float = 0.95, power: float = 3.0, **kwargs):
        kwargs.update(use_ema=True, ema_momentum=0.0, ema_overwrite_frequency=every)
        super().__init__(**kwargs)
        self.total_steps, self.every, self.base, self.power = total_steps, every, base, power

    def _update_model_variables_moving_average(self, trainable_variables):
        step = ops.cast(self.iterations + 1, "float32")
        due = ops.equal(ops.mod(self.iterations + 1, self.every), 0)
        first = ops.equal(self.iterations, 0)
        rho = self.base ** self.every * ops.minimum(step / self.total_steps, 1.0) ** self.power
        for variable, average in zip(trainable_variables, self._model_variables_moving_average):
            if average is None:
                continue
            r = ops.cast(rho, variable.dtype)
            # .value: JAX refuses a Variable itself inside `where`. Keras
            # starts the averages at zero; the slow copy starts as the weights
            # (after the first step), else the first average would scale the
            # weights by 1 - rho: unnoticeable in a full run, where rho is
            # ~1e-6 then, but ruinous in a run of a few dozen steps. (Setting
            # it in build() does not work on TensorFlow, which builds the
            # optimizer inside the traced train step.)
            fast = variable.value
            slow = ops.where(first, fast, average.value)
            average.assign(ops.where(due, r * slow + (1 - r) * fast, slow))

    def finalize_variable_values(self, var_list):
        """Keras calls this at the end of every `fit`, and training calls `fit`
        once per epoch. airbench94 also copies the slow weights back after
        every epoch, discarding the steps since the last average (up to 4);
        we keep those steps and copy back once, after the last step."""
        if int(ops.convert_to_numpy(self.iterations)) >= self.total_steps:
            super().finalize_variable_values(var_list)

    def _overwrite_model_variables_with_average_value(self, trainable_variables):
        # Assign copies: on JAX, `var.assign(average)` makes both variables share
        # one buffer, which the next predict donates, deleting the optimizer's
        # copy too (the model then fails to save). Replaces Keras' version on
        # every backend, tf.distribute handling included: training here runs
        # on one device, without a distribution strategy.
        if len(trainable_variables) != len(self._model_variables_moving_average):
            raise ValueError(f"{len(trainable_variables)} model variables, but the optimizer holds "
                             f"{len(self._model_variables_moving_average)} averages: was it built for this model?")
        for variable, average in zip(trainable_variables, self._model_variables_moving_average):
            if average is not None:
                variable.assign(ops.copy(average.value))

    def get_config(self):
        config = super().get_config()
        for key in ("use_ema", "ema_momentum", "ema_overwrite_frequency"):
            config.pop(key, None)
        return {**config, "total_steps": self.total_steps, "every": self.every,
                "base": self.base, "power": self.power}


@keras.saving.register_keras_serializable(package="cifar")
class WarmupLinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """airbench94's learning-rate triangle: linear from start*peak to peak over
    the first `warmup_fraction` of the steps, then linear down to end*peak."""

    def __init__(self, peak: float, total_steps: int, warmup_fraction: float = 0.23,
                 start: float = 0.2, end: float = 0.07):
        self.peak, self.total_steps = peak, total_steps
        self.warmup_fraction, self.start, self.end = warmup_fraction, start, end

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warmup = max(1, int(self.total_steps * self.warmup_fraction))
        rising = self.start + (1 - self.start) * step / warmup
        falling = 1 + (self.end - 1) * (step - warmup) / max(1, self.total_steps - warmup)
        return self.peak * ops.where(step < warmup, rising, ops.maximum(falling, self.end))

    def get_config(self):
        return {"peak": self.peak, "total_steps": self.total_steps, "warmup_fraction": self.warmup_fraction,
                "start": self.start, "end": self.end}


def _rng(seed: int, *stream: int) -> np.random.Generator:
    """An independent random stream per purpose. Not default_rng([seed, ...]):
    numpy pads short seed lists with zeros, so [s, 7] and [s, 7, 0] would be
    one stream (epoch 0's flips would then decide its shifts)."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=stream))


def epoch_images(images: np.ndarray, epoch: int, seed: int) -> np.ndarray:
    """The training images as epoch `epoch` sees them (airbench94's augmentation).

    Alternating flips: a random half of the images is mirrored in epoch 0 and
    every image's side alternates from one epoch to the next (the paper finds
    this beats independent random flips). Translation: every image is shifted
    by a whole number of pixels in [-2, 2] on each axis, the border filled by
    mirroring. Seeded by (seed, epoch), so a resumed run sees the same data."""
    n, height, width = images.shape[:3]
    flipped = _rng(seed, 1).random(n) < 0.5
    if epoch % 2 == 1:
        flipped = ~flipped
    out = images.copy()
    out[flipped] = out[flipped, :, ::-1]
    pad = TRANSLATE_PIXELS
    padded = np.pad(out, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
    shifts = _rng(seed, 2, epoch).integers(0, 2 * pad + 1, size=(n, 2))
    for dy in range(2 * pad + 1):  # 25 vectorised crops, one per shift
        for dx in range(2 * pad + 1):
            chosen = np.flatnonzero((shifts[:, 0] == dy) & (shifts[:, 1] == dx))
            out[chosen] = padded[chosen, dy:dy + height, dx:dx + width]
    return out


def _batchnorm_gelu(x):
    x = layers.BatchNormalization(momentum=0.6, epsilon=1e-12, scale=False, center=False)(x)
    x = ScaledBias()(x)
    return layers.Activation("gelu")(x)


def _conv(width):
    return layers.Conv2D(width, 3, padding="same", use_bias=False, kernel_initializer=PartialIdentity())


def build_fast_cnn() -> keras.Model:
    """airbench94-style network (see the module docstring); about 1.97M parameters.

    It has no augmentation layers: training augments the data per epoch
    (`epoch_images`), which alternating flips need."""
    inputs = keras.Input(shape=IMAGE_SHAPE, dtype="uint8", name="image")
    x = layers.Rescaling(1 / 255, name="scale")(inputs)
    x = TTAExpand(name="tta_expand")(x)
    x = layers.Normalization(mean=CIFAR_MEAN, variance=np.square(CIFAR_STD), name="normalize")(x)
    x = layers.Conv2D(2 * 3 * WHITEN_PATCH**2, WHITEN_PATCH, padding="valid", name="whiten",
                      trainable=False)(x)
    x = layers.Activation("gelu")(x)
    for width in WIDTHS:
        x = _conv(width)(x)
        x = layers.MaxPooling2D()(x)
        x = _batchnorm_gelu(x)
        x = _conv(width)(x)
        x = _batchnorm_gelu(x)
    x = layers.MaxPooling2D(3)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(NUM_CLASSES, use_bias=False, kernel_initializer=pytorch_default_init())(x)
    x = layers.Rescaling(1 / 9, name="logit_scale")(x)
    x = TTAMerge(name="tta_merge")(x)
    outputs = layers.Activation("softmax", dtype="float32", name="predictions")(x)
    return keras.Model(inputs, outputs, name="fast_cnn")


def whitening_kernel(images: np.ndarray, eps: float = 5e-4) -> tuple[np.ndarray, np.ndarray]:
    """Kernel (2, 2, 3, 24) and bias that whiten 2x2 patches of normalised images."""
    x = (images.astype(np.float32) / 255 - CIFAR_MEAN) / CIFAR_STD
    k = WHITEN_PATCH
    patches = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(1, 2))  # N,H',W',C,k,k
    patches = patches.transpose(0, 1, 2, 4, 5, 3).reshape(-1, k * k * 3).astype(np.float64)
    covariance = patches.T @ patches / len(patches)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    filters = (eigenvectors / np.sqrt(eigenvalues + eps)).T  # one whitening filter per row
    filters = np.concatenate([filters, -filters])
    kernel = filters.reshape(-1, k, k, 3).transpose(1, 2, 3, 0)
    return kernel.astype(np.float32), np.zeros(len(filters), np.float32)


def prepare_fast_cnn(model: keras.Model, x_train: np.ndarray) -> None:
    """Set the frozen whitening layer from (up to 5,000) training images."""
    kernel, bias = whitening_kernel(x_train[:WHITEN_IMAGES])
    model.get_layer("whiten").set_weights([kernel, bias])
