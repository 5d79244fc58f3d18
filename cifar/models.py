"""The model registry: every architecture the CLI, the dashboard and the tests know.

Each entry pairs a builder with its default recipe (the study's training
settings). Builders take raw uint8 32x32 RGB images: scaling and each
backbone's own `preprocess_input` live inside the model, so a saved model
never needs its caller to know what it is.

Only the `keras` API is used here, so the same code runs with
KERAS_BACKEND=tensorflow, jax or torch.

Adding a model: write a builder, decorate it with `@register(summary, **recipe)`,
the recipe being the training settings (RunConfig fields, cifar/config.py)
where it differs from RunConfig's defaults.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping

import keras
from keras import layers

from cifar import IMAGE_SHAPE, NUM_CLASSES, fast_cnn
from cifar.config import FIELDS, RunConfig
from cifar.errors import ModelError


@dataclass(frozen=True)
class ModelSpec:
    name: str
    builder: Callable[..., keras.Model]
    # The model's default training settings: overrides of RunConfig's defaults
    # (cifar/config.py), which CLI flags and job requests override in turn.
    recipe: Mapping[str, Any]
    summary: str = ""
    study_section: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)
    init_from: str | None = None  # fine-tuning starts from a run of this model
    prepare: Callable | None = None  # prepare(model, x_train) before training starts
    # epoch_augment(x_train, epoch, seed) -> the images of that epoch, when augmenting;
    # for augmentation a layer cannot express (fast_cnn's alternating flips)
    epoch_augment: Callable | None = None

    @property
    def is_transfer(self) -> bool:
        return self.recipe.get("weights") is not None

    @property
    def defaults(self) -> RunConfig:
        """The recipe as a whole config (RunConfig's defaults, then the recipe)."""
        return RunConfig(model=self.name, **self.recipe)


REGISTRY: dict[str, ModelSpec] = {}


def register(summary: str, study_section: str = "", tags: tuple[str, ...] = (), init_from: str | None = None,
             prepare: Callable | None = None, epoch_augment: Callable | None = None, **recipe):
    """Register a builder; keyword arguments beyond these are its recipe (RunConfig fields)."""
    unknown = sorted(set(recipe) - set(FIELDS) | ({"model"} & set(recipe)))
    if unknown:
        raise TypeError(f"recipe settings {unknown} are not RunConfig fields")

    def wrap(builder):
        name = builder.__name__.removeprefix("build_")
        REGISTRY[name] = ModelSpec(name, builder, MappingProxyType(dict(recipe)), summary, study_section,
                                   tags, init_from, prepare, epoch_augment)
        return builder
    return wrap


def get_spec(name: str) -> ModelSpec:
    if name not in REGISTRY:
        known = ", ".join(sorted(REGISTRY))
        raise ModelError(f"unknown model '{name}'. Known models: {known}")
    return REGISTRY[name]



def build_model(name: str, *, input_size: int | None = None, weights: str | None = None,
                augment: bool | None = None, seed: int | None = None) -> keras.Model:
    """Build a registry model; unset options take the recipe's defaults."""
    spec = get_spec(name)
    defaults = spec.defaults
    if seed is not None:
        keras.utils.set_random_seed(seed)
    kwargs = {"augment": defaults.augment if augment is None else augment}
    if spec.is_transfer:
        kwargs["input_size"] = input_size or defaults.input_size
        kwargs["weights"] = weights if weights is not None else defaults.weights
    model = spec.builder(**kwargs)
    allow_jit_on_jax(model)
    return model


# ---------------------------------------------------------------- shared pieces

def _raw_input() -> keras.KerasTensor:
    return keras.Input(shape=IMAGE_SHAPE, dtype="uint8", name="image")


def study_augmentation(seed: int | None = None) -> keras.Sequential:
    """The study's ImageDataGenerator settings as layers (active only in training).

    The study names rotation, horizontal flip and width/height shifts without
    values; we use 15 degrees and 10% shifts, the common Keras defaults for
    CIFAR-10."""
    return keras.Sequential([
        layers.RandomRotation(15 / 360, fill_mode="nearest", seed=seed),
        layers.RandomFlip("horizontal", seed=seed),
        layers.RandomTranslation(0.1, 0.1, fill_mode="nearest", seed=seed),
    ], name="augmentation")


# Keras marks its geometric augmentation layers supports_jit=False (for
# TensorFlow's XLA), and a model holding one is then never compiled: on JAX
# every training step runs op by op. cnn_regularized trained at 255 images/s
# on an H200 that way (docs/BENCHMARKS.md). Their JAX code is plain jax.numpy
# and jits, so on JAX we let such a model be compiled.
JITTABLE_ON_JAX = (layers.RandomRotation, layers.RandomTranslation)


def allow_jit_on_jax(model: keras.Model) -> None:
    """On JAX, jit the steps of `model` (training, evaluation, prediction) when its only
    unjittable layers are JITTABLE_ON_JAX. Called by build_model and the load paths
    (resume, predict); compile() then resolves jit_compile="auto" to True by itself."""
    if keras.backend.backend() != "jax":
        return
    every = leaf_layers(model)  # a model itself always supports jit: only its layers decide
    for layer in every:
        if isinstance(layer, JITTABLE_ON_JAX):
            layer.supports_jit = True
    if all(layer.supports_jit for layer in every):
        model.jit_compile = True  # load_model() may have compiled it with jit off already


def leaf_layers(model: keras.Model, *, open_sequential: bool = True) -> list[keras.layers.Layer]:
    """Every layer of `model` that is not itself a model, in order, nested models
    opened (the VGG16 and ResNet50 bases). With `open_sequential=False` a
    Sequential block (the augmentation) stays one layer, as the results table
    counts layers."""
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.Model) and (open_sequential or not isinstance(layer, keras.Sequential)):
            found.extend(leaf_layers(layer, open_sequential=open_sequential))
        else:
            found.append(layer)
    return found


def _classifier_output(x):
    # float32 softmax keeps probabilities exact under mixed precision.
    return layers.Dense(NUM_CLASSES, activation="softmax", dtype="float32", name="predictions")(x)


def _conv_blocks(x, batchnorm: bool):
    for filters in (64, 128, 256):
        for _ in range(2):
            x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
            if batchnorm:
                x = layers.BatchNormalization()(x)
        x = layers.MaxPooling2D()(x)
    return x


# ---------------------------------------------------------------- home-made CNNs

# RunConfig's defaults are this recipe: Adam at 1e-3, batch 64, 15 epochs.
@register("Study 3.1: 3 conv blocks, no augmentation (overfits)", study_section="3.1", tags=("study",))
def build_cnn_baseline(augment: bool = False) -> keras.Model:
    """Study 3.1, "Home-made CNN (v3)": 2,196,810 parameters.

    Three blocks of two 3x3 'same' ReLU convolutions (64, 128, 256 filters)
    each followed by 2x2 max pooling, then Flatten, Dense 256 ReLU, Dense 10.
    Batch size is not given by the study; we use 64."""
    inputs = _raw_input()
    x = study_augmentation()(inputs) if augment else inputs
    x = layers.Rescaling(1 / 255, name="scale")(x)
    x = _conv_blocks(x, batchnorm=False)
    x = layers.Flatten()(x)
    x = layers.Dense(256, activation="relu")(x)
    return keras.Model(inputs, _classifier_output(x), name="cnn_baseline")


@register("Study 3.2: + BatchNorm, dropout, augmentation, early stopping", study_section="3.2",
          tags=("study",), epochs=50, augment=True, early_stopping_patience=8)
def build_cnn_regularized(augment: bool = True) -> keras.Model:
    """Study 3.2, "Home-made CNN (v4)": 2,200,394 parameters.

    cnn_baseline with BatchNormalization after every convolution and dropout
    before the output layer, trained on augmented images with early stopping.
    Readings of the study: its results table says 20 epochs, its text 50; we
    default to 50 with early stopping (patience 8 on val_accuracy, best
    weights restored), which stops near 20 when progress stalls. The dropout
    rate is not given; we use 0.5, the usual rate before a classifier."""
    inputs = _raw_input()
    x = study_augmentation()(inputs) if augment else inputs
    x = layers.Rescaling(1 / 255, name="scale")(x)
    x = _conv_blocks(x, batchnorm=True)
    x = layers.Flatten()(x)
    x = layers.Dense(256, activation="relu")(x)
    x = layers.Dropout(0.5)(x)
    return keras.Model(inputs, _classifier_output(x), name="cnn_regularized")


# ---------------------------------------------------------------- transfer learning

def load_backbone(app: Callable, name: str, input_size: int, weights: str | None):
    """A keras.applications base without its top, with a clear error offline."""
    shape = (input_size, input_size, 3)
    if weights in (None, "none"):
        return app(include_top=False, weights=None, input_shape=shape)
    if weights != "imagenet":
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ModelError(f"weights file '{weights}' does not exist. Pass --weights imagenet, "
                             "--weights none, or the path of a no-top .h5 weights file")
        try:
            return app(include_top=False, weights=str(path), input_shape=shape)
        except Exception as exc:
            raise ModelError(f"could not load {name} weights from '{weights}': {exc}. "
                             f"It must be the Keras '{name} no-top' .h5 file") from exc
    try:
        return app(include_top=False, weights="imagenet", input_shape=shape)
    except Exception as exc:
        cache = Path(os.environ.get("KERAS_HOME", "~/.keras")).expanduser()
        raise ModelError(
            f"could not download the ImageNet weights for {name} ({exc.__class__.__name__}). "
            f"On a machine with internet they download once into {cache}/models/. Offline, copy the "
            f"Keras '{name.lower()}_weights_tf_dim_ordering_tf_kernels_notop.h5' file there or pass "
            "--weights /path/to/that.h5; --weights none trains from random initialisation "
            "(results are then labelled as such)") from exc


def _resize_and_preprocess(inputs, input_size: int, preprocess: Callable):
    # A Resizing layer (never a Lambda: Lambda layers cannot be loaded with
    # safe_mode=True) upsamples 32x32 to the backbone's input size.
    x = layers.Resizing(input_size, input_size, interpolation="bilinear", name="upsample")(inputs)
    return preprocess(x)


def _vgg16(input_size: int, weights: str | None, augment: bool, trainable_tail: int,
           caffe_preprocess: bool = False) -> keras.Model:
    from keras.applications import vgg16
    base = load_backbone(vgg16.VGG16, "VGG16", input_size, weights)
    base.trainable = trainable_tail > 0
    for layer in base.layers[:len(base.layers) - trainable_tail]:
        layer.trainable = False
    inputs = _raw_input()
    x = study_augmentation()(inputs) if augment else inputs
    if caffe_preprocess:
        x = _resize_and_preprocess(x, input_size, vgg16.preprocess_input)
    else:
        x = _resize_and_preprocess(x, input_size, layers.Rescaling(1 / 255, name="scale"))
    x = base(x, training=False)
    for filters in (256, 512):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = layers.BatchNormalization()(x)
        # The study's 'valid' pooling (7 -> 3 -> 1 at 224); a 1x1 map (small
        # inputs) would pool to nothing, so it passes through with 'same'.
        x = layers.MaxPooling2D(padding="valid" if x.shape[1] >= 2 else "same")(x)
    x = layers.GlobalAveragePooling2D()(x)
    for units in (512, 256):
        x = layers.Dense(units, activation="relu")(x)
        x = layers.BatchNormalization()(x)
        x = layers.Dropout(0.3)(x)
    return keras.Model(inputs, _classifier_output(x))


VGG_DOC = """Study 4.{section}: VGG16 ImageNet base on input upscaled to `input_size`
    (224 in the study, giving a 7x7x512 feature map), then the study's head:
    Conv2D 256 + BN + MaxPool, Conv2D 512 + BN + MaxPool, GlobalAveragePooling,
    Dense 512 + BN + Dropout, Dense 256 + BN + Dropout, Dense 10.
    Readings: the study elides its dense head ("..."), but its total of
    17,477,450 parameters is matched exactly by Dense 512/256 with BN, which
    we use (at 224). Its printed trainable count (9,839,114) is block5 of VGG16
    unfrozen, i.e. the fine-tuned state; for transfer learning we freeze the
    whole base as its text says. Dropout rate (unstated) is 0.3. Max pooling
    uses 'valid' padding as printed (7 -> 3 -> 1 at 224); a map already 1x1
    (inputs under 64 px for the first pooling, under 128 px for the second)
    passes through unchanged.
    {preprocessing}"""

STUDY_PREPROCESSING = """Preprocessing follows the study (section 1.3): pixels scaled to 0-1,
    `preprocess_input` used only for ResNet50. VGG16's ImageNet weights were
    trained on caffe-style inputs (BGR, ImageNet mean subtracted, 0-255), so
    the study's choice is arguably wrong: {variant} is the same model with
    `keras.applications.vgg16.preprocess_input`."""

CAFFE_PREPROCESSING = """Not the study's preprocessing: this variant feeds the base what its
    ImageNet weights expect, `keras.applications.vgg16.preprocess_input`
    (BGR, ImageNet mean subtracted), where the study (and {study}) scales
    pixels to 0-1."""


@register("Study 4.1: frozen ImageNet VGG16 + conv head, inputs 0-1 as the study "
          "(vgg16_transfer_caffe: VGG's own preprocessing)", study_section="4.1", tags=("study", "transfer"),
          epochs=50, input_size=224, weights="imagenet")
def build_vgg16_transfer(input_size: int = 224, weights: str | None = "imagenet",
                 augment: bool = False) -> keras.Model:
    model = _vgg16(input_size, weights, augment, trainable_tail=0)
    model.name = "vgg16_transfer"
    return model


@register("Study 4.2: last 4 VGG16 layers unfrozen at lr 1e-5, inputs 0-1 as the study", study_section="4.2",
          tags=("study", "transfer"), init_from="vgg16_transfer",
          learning_rate=1e-5, epochs=30, input_size=224, weights="imagenet")
def build_vgg16_finetune(input_size: int = 224, weights: str | None = "imagenet",
                 augment: bool = False) -> keras.Model:
    model = _vgg16(input_size, weights, augment, trainable_tail=4)
    model.name = "vgg16_finetune"
    return model


@register("4.1 variant (not the study's): vgg16_transfer with the caffe preprocess_input "
          "VGG's ImageNet weights expect", study_section="4.1", tags=("transfer",),
          epochs=50, input_size=224, weights="imagenet")
def build_vgg16_transfer_caffe(input_size: int = 224, weights: str | None = "imagenet",
                 augment: bool = False) -> keras.Model:
    model = _vgg16(input_size, weights, augment, trainable_tail=0, caffe_preprocess=True)
    model.name = "vgg16_transfer_caffe"
    return model


@register("4.2 variant (not the study's): vgg16_finetune with VGG's caffe preprocess_input",
          study_section="4.2", tags=("transfer",), init_from="vgg16_transfer_caffe",
          learning_rate=1e-5, epochs=30, input_size=224, weights="imagenet")
def build_vgg16_finetune_caffe(input_size: int = 224, weights: str | None = "imagenet",
                 augment: bool = False) -> keras.Model:
    model = _vgg16(input_size, weights, augment, trainable_tail=4, caffe_preprocess=True)
    model.name = "vgg16_finetune_caffe"
    return model


_FINETUNE_DOC = """
    Fine-tuning unfreezes the last 4 base layers (block5's three convolutions
    and its pooling) at learning rate 1e-5, starting from a {donor} run's
    weights (--from-run, or the newest {donor} run)."""
build_vgg16_transfer.__doc__ = VGG_DOC.format(
    section=1, preprocessing=STUDY_PREPROCESSING.format(variant="vgg16_transfer_caffe"))
build_vgg16_finetune.__doc__ = VGG_DOC.format(
    section=2, preprocessing=STUDY_PREPROCESSING.format(variant="vgg16_finetune_caffe")) + \
    _FINETUNE_DOC.format(donor="vgg16_transfer")
build_vgg16_transfer_caffe.__doc__ = VGG_DOC.format(
    section=1, preprocessing=CAFFE_PREPROCESSING.format(study="vgg16_transfer"))
build_vgg16_finetune_caffe.__doc__ = VGG_DOC.format(
    section=2, preprocessing=CAFFE_PREPROCESSING.format(study="vgg16_finetune")) + \
    _FINETUNE_DOC.format(donor="vgg16_transfer_caffe")


def _resnet50(input_size: int, weights: str | None, augment: bool, trainable_from: str | None) -> keras.Model:
    from keras.applications import resnet50
    base = load_backbone(resnet50.ResNet50, "ResNet50", input_size, weights)
    if trainable_from is not None:
        frozen = True
        for layer in base.layers:
            if layer.name.startswith(trainable_from):
                frozen = False
            layer.trainable = not frozen
    inputs = _raw_input()
    x = study_augmentation()(inputs) if augment else inputs
    x = _resize_and_preprocess(x, input_size, resnet50.preprocess_input)
    # BatchNorm layers of the base stay in inference mode even when unfrozen
    # (keras-io transfer-learning guide), so fine-tuning does not wreck them.
    x = base(x, training=False)
    x = layers.Flatten()(x)
    x = layers.BatchNormalization()(x)
    for units in (256, 128, 64):
        x = layers.Dense(units, activation="relu")(x)
        x = layers.Dropout(0.3)(x)
        x = layers.BatchNormalization()(x)
    return keras.Model(inputs, _classifier_output(x))


@register("Study 5.2: ResNet50, last conv block trainable, dense head", study_section="5.2",
          tags=("study", "transfer"), optimizer="rmsprop", learning_rate=1e-5, batch_size=32, epochs=20,
          input_size=224, weights="imagenet")
def build_resnet50_transfer(input_size: int = 224, weights: str | None = "imagenet",
                 augment: bool = False) -> keras.Model:
    """Study 5.2: ResNet50 (ImageNet) at {input_size}, 49,723,082 parameters at 224.

    Input resized to 224 by a Resizing layer (the study used a Lambda layer,
    which cannot be loaded safely). The base is frozen except its last
    convolution block, read as the whole conv5 stage (the study's 142 frozen
    layers end at conv4_block6_out). Head as printed: Flatten, BN, then Dense
    256/128/64 each with Dropout and BN, Dense 10. RMSprop 1e-5, batch 32.
    The study mentions augmentation for this run but lists no settings; we
    leave it off by default (--augment turns it on)."""
    model = _resnet50(input_size, weights, augment, trainable_from="conv5_")
    model.name = "resnet50_transfer"
    return model


@register("Study 5.3: every layer unfrozen at a low learning rate", study_section="5.3",
          tags=("study", "transfer"), init_from="resnet50_transfer",
          optimizer="rmsprop", learning_rate=1e-6, batch_size=32, epochs=4, input_size=224, weights="imagenet")
def build_resnet50_finetune(input_size: int = 224, weights: str | None = "imagenet",
                 augment: bool = False) -> keras.Model:
    """Study 5.3: the resnet50_transfer model with every layer unfrozen.

    "A low learning rate" is read as 1e-6 (a tenth of the transfer rate) and
    the study's 24 total epochs as 4 more after a 20-epoch transfer run. It
    starts from a resnet50_transfer run's weights."""
    model = _resnet50(input_size, weights, augment, trainable_from=None)
    model.name = "resnet50_finetune"
    return model


@register("airbench94-style: whitening, identity init, EMA, TTA; 10 epochs", tags=("fast",),
          prepare=fast_cnn.prepare_fast_cnn, epoch_augment=fast_cnn.epoch_images,
          optimizer="sgd_nesterov", learning_rate=1.5, batch_size=1024, epochs=10, augment=True,
          label_smoothing=0.2, momentum=0.85, weight_decay=8.9e-3, warmup_fraction=0.23, ema_momentum=0.95,
          val_size=0)
def build_fast_cnn(augment: bool = True) -> keras.Model:
    """See cifar/fast_cnn.py: the recipe, its sources and its deviations.

    The network is the same with or without `augment`: its augmentation is
    done on the data, once per epoch (`fast_cnn.epoch_images`)."""
    del augment
    return fast_cnn.build_fast_cnn()


def count_params(model: keras.Model) -> dict[str, int]:
    trainable = sum(_size(w) for w in model.trainable_weights)
    total = sum(_size(w) for w in model.weights)
    return {"total": total, "trainable": trainable, "non_trainable": total - trainable}


def _size(variable) -> int:
    size = 1
    for dim in variable.shape:
        size *= int(dim)
    return size


def describe(model: keras.Model) -> dict:
    """Facts the results table shows: layer count and regularisers used."""
    all_layers = leaf_layers(model, open_sequential=False)
    kinds = {type(layer).__name__ for layer in all_layers}
    return {
        "layers": sum(1 for layer in all_layers if not isinstance(layer, keras.layers.InputLayer)),
        "batchnorm": "BatchNormalization" in kinds,
        "dropout": "Dropout" in kinds,
    }

