"""Keras models by name: ``mlp`` and ``cnn`` (for the bundled digits), or ``module:function``
for a user model (a function of (input_shape, num_classes) returning an uncompiled model).

Tensor names on the wire are the weights' Keras paths, so layers here carry explicit names:
both sides build the model in their own process and must agree on every name.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from common.errors import TaskError

if TYPE_CHECKING:
    import keras

Weights = dict[str, npt.NDArray[np.float32]]


def quiet_tensorflow(threads: int | None = None) -> Any:
    """Import TensorFlow with its start-up logs silenced and, on a shared machine, its
    thread pools capped (must happen before any op runs)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    if threads is not None:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError:
            pass  # already initialised: keep what is set
    return tf


def _mlp(input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    import keras

    return keras.Sequential(
        [
            keras.Input(shape=input_shape),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(64, activation="relu", name="hidden"),
            keras.layers.Dense(num_classes, activation="softmax", name="output"),
        ],
        name="mlp",
    )


def _cnn(input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    import keras

    side = round(float(np.sqrt(np.prod(input_shape))))
    return keras.Sequential(
        [
            keras.Input(shape=input_shape),
            keras.layers.Reshape((side, side, 1), name="image"),
            keras.layers.Conv2D(16, 3, activation="relu", padding="same", name="conv1"),
            keras.layers.MaxPooling2D(name="pool1"),
            keras.layers.Conv2D(32, 3, activation="relu", padding="same", name="conv2"),
            keras.layers.GlobalAveragePooling2D(name="pool2"),
            keras.layers.Dense(num_classes, activation="softmax", name="output"),
        ],
        name="cnn",
    )


REGISTRY: dict[str, Callable[[tuple[int, ...], int], Any]] = {"mlp": _mlp, "cnn": _cnn}


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    """An uncompiled model from the registry or ``module:function``."""
    if name in REGISTRY:
        factory = REGISTRY[name]
    elif ":" in name:
        module_name, _, function_name = name.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), function_name)
        except (ImportError, AttributeError) as error:
            raise TaskError(f"model {name!r}: cannot import ({error})") from error
    else:
        raise TaskError(f"unknown model {name!r}: use one of {sorted(REGISTRY)} or module:function")
    try:
        model = factory(input_shape, num_classes)
    except Exception as error:  # user code: any failure becomes a named TaskError
        raise TaskError(f"model {name!r} failed to build: {error}") from error
    if not getattr(model, "weights", None):
        raise TaskError(f"model {name!r} has no weights")
    return model


def get_weights(model: keras.Model) -> Weights:
    """Named float32 copies of a model's weights, in the model's order."""
    return {w.path: np.array(w.numpy(), dtype=np.float32) for w in model.weights}


def set_weights(model: keras.Model, weights: Weights) -> None:
    """Load named weights; names and shapes must match exactly (TaskError otherwise)."""
    expected = {w.path: tuple(w.shape) for w in model.weights}
    if set(expected) != set(weights):
        missing = sorted(set(expected) - set(weights))
        extra = sorted(set(weights) - set(expected))
        raise TaskError(f"weights do not match the model: missing {missing}, unexpected {extra}")
    for variable in model.weights:
        value = weights[variable.path]
        if tuple(value.shape) != expected[variable.path]:
            raise TaskError(
                f"weight {variable.path!r}: shape {tuple(value.shape)} != {expected[variable.path]}"
            )
        variable.assign(value)
