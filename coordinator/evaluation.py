"""The coordinator's view of the task: initial weights and held-out evaluation. Uses the
shared task definitions (``common.tasks``); TensorFlow is imported only here, lazily."""

from __future__ import annotations

from typing import Any

import numpy as np

from common.tasks.data import Dataset, DigitsFederation, load_npz
from common.tasks.models import Weights, build_model, get_weights, quiet_tensorflow, set_weights
from configs.task import DigitsData, TaskSettings


class Evaluator:
    """Builds the model once; evaluates weights on the held-out set (call from a thread)."""

    def __init__(self, task: TaskSettings, seed: int, threads: int | None = 1) -> None:
        tf = quiet_tensorflow(threads)
        tf.keras.utils.set_random_seed(seed)
        self.model: Any = build_model(task.model, task.input_shape, task.num_classes)
        self.model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        self.test: Dataset | None = test_set(task)

    def initial_weights(self) -> Weights:
        return get_weights(self.model)

    def accuracy(self, weights: Weights) -> float | None:
        if self.test is None:
            return None
        set_weights(self.model, weights)
        # a direct call: Keras' predict() sets up a data pipeline each time (~10x slower
        # for a held-out set this small, and it runs after every version)
        probabilities = np.asarray(self.model(self.test.x, training=False))

        return float(np.mean(np.argmax(probabilities, axis=1) == self.test.y))


def test_set(task: TaskSettings) -> Dataset | None:
    data = task.data
    if isinstance(data, DigitsData):
        return DigitsFederation(
            data.num_agents, data.alpha, data.seed, data.test_fraction
        ).test_set()
    test_path = data.path.with_name(data.path.stem + "-test.npz")
    return load_npz(test_path) if test_path.exists() else None
