"""Local training with Keras, called from a worker thread so the event loop keeps the MQTT
connection and heartbeats alive. The model is built and compiled once; each round only
loads weights (recompiling would retrace the training function every round)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from common.messages import TrainingSettings
from common.tasks.data import Dataset
from common.tasks.models import Weights, build_model, get_weights, quiet_tensorflow, set_weights
from configs.task import TaskSettings


@dataclass(frozen=True)
class TrainResult:
    weights: Weights
    seconds: float
    loss: float
    accuracy: float


def _StopWhenCancelled(cancelled: threading.Event) -> Any:
    """A Keras callback (built lazily: keras is imported only with TensorFlow)."""
    import keras

    class StopWhenCancelled(keras.callbacks.Callback):  # type: ignore[misc]
        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            if cancelled.is_set():
                self.model.stop_training = True

    return StopWhenCancelled()


class Trainer:
    def __init__(self, task: TaskSettings, data: Dataset, threads: int | None, seed: int) -> None:
        self.tf: Any = quiet_tensorflow(threads)
        self.tf.keras.utils.set_random_seed(seed)
        self.model: Any = build_model(task.model, task.input_shape, task.num_classes)
        self.data = data
        self._learning_rate: float | None = None
        self._cancel = threading.Event()
        self._callbacks = [_StopWhenCancelled(self._cancel)]

    def cancel(self) -> None:
        """Stop a running fit at the end of its current batch (a bounded SIGTERM)."""
        self._cancel.set()

    def weights(self) -> Weights:
        return get_weights(self.model)

    def _compile(self, learning_rate: float) -> None:
        if learning_rate != self._learning_rate:
            import keras

            self.model.compile(
                optimizer=keras.optimizers.SGD(learning_rate=learning_rate),
                loss="sparse_categorical_crossentropy",
                metrics=["accuracy"],
            )
            self._learning_rate = learning_rate

    def train(self, base: Weights, settings: TrainingSettings) -> TrainResult:
        self._compile(settings.learning_rate)
        set_weights(self.model, base)
        started = time.perf_counter()
        history = self.model.fit(
            self.data.x,
            self.data.y,
            epochs=settings.epochs,
            batch_size=settings.batch_size,
            shuffle=True,
            verbose=0,
            callbacks=self._callbacks,
        )

        seconds = time.perf_counter() - started
        return TrainResult(
            get_weights(self.model),
            seconds,
            float(history.history["loss"][-1]),
            float(history.history["accuracy"][-1]),
        )
