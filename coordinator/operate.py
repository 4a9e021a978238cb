"""Operator actions from any machine with broker credentials: pause, resume or stop a job
through its coordinator (``operator`` account), and export the current global model.

A command is confirmed only by the coordinator itself: it republishes the retained control
with the command's id once the change is durable, so a retained control left by an earlier
run can never pass for a confirmation.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import socket
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import numpy as np
import numpy.typing as npt

from codec import CodecError, decode_model
from common.errors import ProtocolError
from common.messages import (
    Command,
    CommandAction,
    Control,
    Event,
    EventType,
    RunState,
    parse,
)
from common.topics import Topics
from configs.broker import BrokerConnection
from configs.task import TaskSettings
from coordinator.errors import CoordinatorError
from coordinator.inspect import broker_error, client, read_model

TARGET = {
    CommandAction.PAUSE: RunState.PAUSE,
    CommandAction.RESUME: RunState.RUN,
    CommandAction.STOP: RunState.STOP,
}


class NotConfirmed(CoordinatorError):
    """No coordinator confirmed the command in time."""


class CommandRefused(CoordinatorError):
    """The coordinator answered the command with ``command_rejected``."""


class OutputExists(CoordinatorError):
    """An export would replace a file (and ``force`` was not given)."""


class ExportError(CoordinatorError):
    """The retained model cannot be decoded, or the files cannot be written."""


def issuer() -> str:
    """Who is asking, for the event and the coordinator's log: ``user@host``."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name in a bare container
        user = "unknown"
    return f"{user}@{socket.gethostname()}"[:128]


# --- commands ---------------------------------------------------------------------------


async def _confirmation(connection: aiomqtt.Client, topics: Topics, command: Command) -> Control:
    async for message in connection.messages:
        payload = message.payload if isinstance(message.payload, bytes) else b""
        topic = str(message.topic)
        with contextlib.suppress(ProtocolError):
            if topic == topics.control:
                control = parse(Control, payload)
                if control.command_id == command.id and control.state == TARGET[command.action]:
                    return control
            elif topic == topics.events:
                event = parse(Event, payload)
                if event.type == EventType.COMMAND_REJECTED and event.command_id == command.id:
                    raise CommandRefused(f"coordinator refused it: {event.reason} ({event.detail})")
    raise aiomqtt.MqttError("the broker ended the connection")


async def _send(
    broker: BrokerConnection, topics: Topics, command: Command, timeout: float
) -> Control:
    try:
        async with client(broker, timeout) as connection:
            # subscribed before publishing: the confirmation cannot slip past us
            await connection.subscribe(topics.control, qos=1)
            await connection.subscribe(topics.events, qos=1)
            await connection.publish(topics.command, command.to_json(), qos=1, timeout=timeout)
            try:
                return await asyncio.wait_for(_confirmation(connection, topics, command), timeout)
            except asyncio.TimeoutError:
                raise NotConfirmed(
                    f"no coordinator of job {topics.job!r} confirmed {command.action.value} "
                    f"within {timeout:g} s (none running, or the account {broker.username!r} "
                    "may not publish commands; a coordinator that is only disconnected gets "
                    "the command when it reconnects)"
                ) from None
    except aiomqtt.MqttError as error:
        raise broker_error(broker, error) from error


def send_command(
    broker: BrokerConnection, topics: Topics, command: Command, timeout: float = 15.0
) -> Control:
    """Publish ``command`` and wait for the coordinator's confirmation: the retained control
    in the new state, naming the command. Raises NotConfirmed, CommandRefused, InspectError."""
    return asyncio.run(_send(broker, topics, command, timeout))


# --- export -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Exported:
    job: str
    version: int
    metrics: dict[str, float]
    tensors: int
    npz: Path
    keras: Path | None


def export_paths(stem: Path, keras: bool) -> tuple[Path, Path | None]:
    """``stem.npz`` and ``stem.keras`` (a given ``.npz``/``.keras`` suffix is dropped)."""
    if stem.suffix in (".npz", ".keras"):
        stem = stem.with_suffix("")
    return stem.with_name(stem.name + ".npz"), (
        stem.with_name(stem.name + ".keras") if keras else None
    )


def _write_npz(path: Path, arrays: dict[str, npt.NDArray[np.float32]]) -> None:
    """What ``np.savez`` writes, without its ``file`` keyword clashing with a tensor name;
    replaced atomically, so a reader never sees half a file."""
    temporary = path.with_name(f".{path.name}.tmp")
    with zipfile.ZipFile(temporary, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asarray(array), allow_pickle=False)
    os.replace(temporary, path)


def _keras_model(task: TaskSettings, arrays: dict[str, npt.NDArray[np.float32]]) -> Any:
    """The task's Keras model holding ``arrays`` (TaskError when they do not fit it)."""
    from common.tasks.models import build_model, quiet_tensorflow, set_weights

    quiet_tensorflow()
    model = build_model(task.model, task.input_shape, task.num_classes)
    set_weights(model, arrays)
    return model


def export_model(
    broker: BrokerConnection,
    topics: Topics,
    stem: Path | None,
    task: TaskSettings | None,
    *,
    force: bool = False,
    timeout: float = 5.0,
) -> Exported | None:
    """Write the retained model as ``.npz`` (tensor names as keys) and, given the task, as a
    ``.keras`` model. None when the job has no model. ``stem`` None: ``<job>-v<version>``.
    Nothing is written when a file exists (without ``force``) or the task does not fit."""
    if stem is not None:
        _refuse_existing(export_paths(stem, task is not None), force)
    payload = read_model(broker, topics, timeout)
    if payload is None:
        return None
    try:
        model = decode_model(payload)
    except CodecError as error:
        raise ExportError(f"the retained model of job {topics.job!r}: {error}") from error
    arrays = model.arrays()
    if stem is None:
        stem = Path(f"{topics.job}-v{model.version}")
        _refuse_existing(export_paths(stem, task is not None), force)
    npz, keras_path = export_paths(stem, task is not None)
    keras_model = None if task is None else _keras_model(task, arrays)  # before any write
    try:
        _write_npz(npz, arrays)
        if keras_path is not None and keras_model is not None:
            temporary = keras_path.with_name(f".{keras_path.stem}.tmp.keras")
            keras_model.save(temporary)
            os.replace(temporary, keras_path)
    except OSError as error:
        raise ExportError(f"cannot write {error.filename or stem}: {error.strerror}") from error
    return Exported(
        job=topics.job,
        version=model.version,
        metrics=dict(model.metrics),
        tensors=len(arrays),
        npz=npz,
        keras=keras_path,
    )


def _refuse_existing(paths: tuple[Path, Path | None], force: bool) -> None:
    for path in paths:
        if path is not None and path.exists() and not force:
            raise OutputExists(f"{path} exists: use --force to replace it")
