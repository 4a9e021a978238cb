"""The JSON messages: round trips, no ``null`` written, refusals that name the field, unknown
fields ignored, and the codec config in ``Control`` validated and completed."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from codec import get_codec
from common.errors import ProtocolError
from common.messages import (
    MAX_JSON_BYTES,
    AgentState,
    AgentStatus,
    Control,
    CoordinatorState,
    CoordinatorStatus,
    Event,
    EventType,
    LazyUpload,
    Message,
    Mode,
    RunState,
    TrainingSettings,
    parse,
)

UNIFORM_4 = {"id": "uniform", "bits": 4, "bucket_size": 512, "rounding": "stochastic"}

# Every message, once with only what it requires and once with every field set.
MESSAGES: dict[str, Message] = {
    "agent status, minimal": AgentStatus.model_validate({"agent": "a", "state": "online"}),
    "agent status, full": AgentStatus.model_validate(
        {
            "agent": "jetson-07",
            "state": AgentState.ERROR,
            "heartbeat": 1795477755.8073432,
            "base_version": 12,
            "last_update": "e58aa7283012a84d589ad3bf753de303",
            "last_update_at": 1795477750.25,
            "updates_sent": 9,
            "uploads_skipped": 3,
            "uplink_bytes": 123456,
            "error": "model refused: tensor 'dense/kernel' has shape (3, 4)",
            "temperature_c": 61.5,
        }
    ),
    "control, defaults": Control.model_validate({}),
    "control, full": Control.model_validate(
        {
            "state": RunState.PAUSE,
            "mode": Mode.SYNC,
            "issued_at": 1795477700.5,
            "training": {
                "epochs": 3,
                "batch_size": 64,
                "learning_rate": 0.05,
                "codec": {"id": "topk", "fraction": 0.05},
                "error_feedback": False,
                "lazy_upload": {
                    "enabled": True,
                    "history": 5,
                    "weight": 0.5,
                    "scale": 2.0,
                    "max_skips": 7,
                },
            },
        }
    ),
    "coordinator status, minimal": CoordinatorStatus.model_validate(
        {"job": "digits", "state": "starting", "version": 0, "strategy": "fedbuff"}
    ),
    "coordinator status, full": CoordinatorStatus.model_validate(
        {
            "job": "demo",
            "state": CoordinatorState.RUNNING,
            "version": 42,
            "strategy": "fedasync",
            "heartbeat": 1795477755.8073432,
            "buffered": 2,
            "agents_seen": 8,
            "agents_online": 7,
            "accepted": 100,
            "rejected": 4,
            "uplink_bytes": 987654321,
            "last_accuracy": 0.0807799442896936,
            "started_at": 1795477753.215929,
        }
    ),
    "event, minimal": Event.model_validate({"type": "agent_joined"}),
    "event, full": Event.model_validate(
        {
            "type": EventType.UPDATE_REJECTED,
            "time": 1795477891.179102,
            "agent": "agent-2",
            "update_id": "552279e3fa1214d26f4bfea67a7a4a28",
            "version": 5,
            "base_version": 3,
            "staleness": 2,
            "reason": "late",
            "detail": "staleness 2",
            "accuracy": 0.5,
            "num_samples": 685,
            "bytes": 5467,
        }
    ),
    "training settings": TrainingSettings.model_validate({"codec": {"id": "sign"}}),
    "lazy upload": LazyUpload.model_validate({"enabled": True, "max_skips": 0}),
}


def fields(payload: bytes) -> dict[str, Any]:
    decoded = json.loads(payload)
    assert isinstance(decoded, dict)
    return decoded


def walk(node: Any) -> list[Any]:
    """Every value in a decoded JSON document, nested ones included."""
    if isinstance(node, dict):
        return [value for child in node.values() for value in [child, *walk(child)]]
    if isinstance(node, list):
        return [value for child in node for value in [child, *walk(child)]]
    return []


def refused(kind: type[Message], payload: bytes | str, field: str) -> str:
    with pytest.raises(ProtocolError) as raised:
        parse(kind, payload)
    message = str(raised.value)
    assert message.startswith(f"{kind.__name__}.{field}:"), message
    return message


# --- round trips and what is written -----------------------------------------------------


@pytest.mark.parametrize("message", MESSAGES.values(), ids=MESSAGES.keys())
def test_every_message_round_trips(message):
    payload = message.to_json()
    assert isinstance(payload, bytes)
    again = parse(type(message), payload)
    assert again == message
    assert again.to_json() == payload
    assert parse(type(message), payload.decode()) == message  # str payloads too


@pytest.mark.parametrize("message", MESSAGES.values(), ids=MESSAGES.keys())
def test_to_json_never_writes_null(message):
    payload = message.to_json()
    assert not any(value is None for value in walk(json.loads(payload)))
    written = fields(payload)
    expected = {name for name, value in message if value is not None}
    assert set(written) == expected


def test_to_json_omits_only_the_none_fields():
    event = Event.model_validate({"type": "version", "time": 1.5, "version": 3})
    assert fields(event.to_json()) == {"type": "version", "time": 1.5, "version": 3}
    status = AgentStatus.model_validate({"agent": "a", "state": "idle", "heartbeat": 2.0})
    assert fields(status.to_json()) == {
        "agent": "a",
        "state": "idle",
        "heartbeat": 2.0,
        "updates_sent": 0,
        "uploads_skipped": 0,
        "uplink_bytes": 0,
    }


finite = st.floats(allow_nan=False, allow_infinity=False)
counts = st.integers(min_value=0, max_value=2**53)


@given(
    st.builds(
        AgentStatus,
        agent=st.text(min_size=1),
        state=st.sampled_from(AgentState),
        heartbeat=finite,
        base_version=st.none() | counts,
        last_update=st.none() | st.text(),
        last_update_at=st.none() | finite,
        updates_sent=counts,
        uploads_skipped=counts,
        uplink_bytes=counts,
        error=st.none() | st.text(),
        temperature_c=st.none() | finite,
    )
)
def test_any_agent_status_round_trips(status):
    assert parse(AgentStatus, status.to_json()) == status


@given(
    st.builds(
        Event,
        type=st.sampled_from(EventType),
        time=finite,
        agent=st.none() | st.text(),
        update_id=st.none() | st.text(),
        version=st.none() | st.integers(),
        base_version=st.none() | st.integers(),
        staleness=st.none() | st.integers(),
        reason=st.none() | st.text(),
        detail=st.none() | st.text(),
        accuracy=st.none() | finite,
        num_samples=st.none() | st.integers(),
        bytes=st.none() | st.integers(),
    )
)
def test_any_event_round_trips(event):
    assert parse(Event, event.to_json()) == event


# --- what parse accepts ------------------------------------------------------------------


def test_unknown_fields_are_ignored():
    payload = b'{"agent":"a","state":"online","firmware":{"v":2},"future_counter":7}'
    status = parse(AgentStatus, payload)
    assert status.agent == "a"
    assert "firmware" not in fields(status.to_json())
    control = parse(Control, b'{"training":{"epochs":2,"momentum":0.9},"priority":1}')
    assert control.training.epochs == 2


def test_null_for_an_optional_field_reads_as_absent():
    event = parse(Event, b'{"type":"version","time":1.0,"accuracy":null}')
    assert event.accuracy is None
    assert b"accuracy" not in event.to_json()


def test_absent_fields_take_their_defaults():
    control = parse(Control, b"{}")
    assert control.state is RunState.RUN
    assert control.mode is Mode.ASYNC
    assert control.training == TrainingSettings.model_validate({})
    assert control.training.codec == get_codec("int8").get_config()
    assert control.training.lazy_upload.enabled is False


def test_a_payload_of_exactly_the_limit_is_accepted():
    payload = b'{"agent":"a","state":"online"}'
    padded = payload[:-1] + b" " * (MAX_JSON_BYTES - len(payload)) + b"}"
    assert len(padded) == MAX_JSON_BYTES
    assert parse(AgentStatus, padded).agent == "a"


# --- what parse refuses ------------------------------------------------------------------


@pytest.mark.parametrize("as_text", [False, True], ids=["bytes", "str"])
def test_oversized_payload_is_refused(as_text):
    payload = b'{"agent":"a","state":"online"}' + b" " * MAX_JSON_BYTES
    with pytest.raises(ProtocolError, match=f"AgentStatus: {len(payload)} bytes exceed"):
        parse(AgentStatus, payload.decode() if as_text else payload)


def test_oversized_text_is_measured_in_utf8_bytes():
    """The limit is in bytes: 40,000 two-byte characters are 80 kB on the wire."""
    text = json.dumps({"agent": "é" * 40_000, "state": "online"}, ensure_ascii=False)
    assert len(text) < MAX_JSON_BYTES < len(text.encode())
    with pytest.raises(ProtocolError, match="exceed"):
        parse(AgentStatus, text)


BAD_FIELDS: list[tuple[type[Message], dict[str, Any], str]] = [
    # missing required fields
    (AgentStatus, {"state": "online"}, "agent"),
    (AgentStatus, {"agent": "a"}, "state"),
    (CoordinatorStatus, {"job": "j", "state": "running", "strategy": "fedbuff"}, "version"),
    (Event, {"time": 1.0}, "type"),
    # wrong types
    (AgentStatus, {"agent": 5, "state": "online"}, "agent"),
    (AgentStatus, {"agent": "a", "state": "online", "updates_sent": "many"}, "updates_sent"),
    (AgentStatus, {"agent": "a", "state": "online", "heartbeat": "soon"}, "heartbeat"),
    (AgentStatus, {"agent": "a", "state": "online", "updates_sent": 1.5}, "updates_sent"),
    (CoordinatorStatus, {"job": "j", "state": "done", "version": [1], "strategy": "x"}, "version"),
    (Event, {"type": "version", "detail": {"text": "x"}}, "detail"),
    (Control, {"training": {"error_feedback": "sometimes"}}, "training.error_feedback"),
    (Control, {"training": {"codec": "int4"}}, "training.codec"),
    (Control, {"training": []}, "training"),
    # values out of range or not in the enumeration
    (AgentStatus, {"agent": "a", "state": "sleeping"}, "state"),
    (AgentStatus, {"agent": "a", "state": "online", "updates_sent": -1}, "updates_sent"),
    (AgentStatus, {"agent": "a", "state": "online", "base_version": -1}, "base_version"),
    (
        CoordinatorStatus,
        {"job": "j", "state": "running", "version": -1, "strategy": "x"},
        "version",
    ),
    (CoordinatorStatus, {"job": "j", "state": "bored", "version": 0, "strategy": "x"}, "state"),
    (Event, {"type": "update_lost"}, "type"),
    (Control, {"state": "halt"}, "state"),
    (Control, {"mode": "semi"}, "mode"),
    (Control, {"training": {"epochs": 0}}, "training.epochs"),
    (Control, {"training": {"epochs": 1001}}, "training.epochs"),
    (Control, {"training": {"batch_size": 65537}}, "training.batch_size"),
    (Control, {"training": {"learning_rate": 0}}, "training.learning_rate"),
    (Control, {"training": {"learning_rate": 10.5}}, "training.learning_rate"),
    (Control, {"training": {"lazy_upload": {"history": 0}}}, "training.lazy_upload.history"),
    (Control, {"training": {"lazy_upload": {"history": 101}}}, "training.lazy_upload.history"),
    (Control, {"training": {"lazy_upload": {"weight": 0}}}, "training.lazy_upload.weight"),
    (Control, {"training": {"lazy_upload": {"scale": -1}}}, "training.lazy_upload.scale"),
    (Control, {"training": {"lazy_upload": {"max_skips": -1}}}, "training.lazy_upload.max_skips"),
]


@pytest.mark.parametrize(
    ("kind", "payload", "field"),
    BAD_FIELDS,
    ids=[f"{kind.__name__}.{field}={payload!r}" for kind, payload, field in BAD_FIELDS],
)
def test_invalid_field_is_refused_naming_it(kind, payload, field):
    refused(kind, json.dumps(payload).encode(), field)


@pytest.mark.parametrize(
    ("kind", "payload", "field"),
    [
        (AgentStatus, '{"agent":"a","state":"online","heartbeat":NaN}', "heartbeat"),
        (Event, '{"type":"version","accuracy":Infinity}', "accuracy"),
        (Control, '{"issued_at":-Infinity}', "issued_at"),
    ],
    ids=["NaN heartbeat", "infinite accuracy", "-infinite issued_at"],
)
def test_non_finite_numbers_are_refused(kind, payload, field):
    """NaN and Infinity are not JSON, and to_json would write them back as null: a message
    that holds one cannot round-trip."""
    refused(kind, payload, field)


@pytest.mark.parametrize(
    "payload", [b"", b"not json", b'{"agent":"a",', b"[1, 2]", b'"text"', b"\xff\xfe{}"]
)
def test_a_payload_that_is_no_json_object_is_refused(payload):
    refused(AgentStatus, payload, "message")


# --- the codec config in Control ---------------------------------------------------------


@pytest.mark.parametrize(
    "given_config",
    [
        {"id": "uniform", "bits": 4},
        {"id": "uniform", "bits": 4, "rounding": "stochastic"},
        UNIFORM_4,
    ],
)
def test_codec_config_is_completed_to_the_canonical_one(given_config):
    payload = json.dumps({"training": {"codec": given_config}}).encode()
    control = parse(Control, payload)
    assert control.training.codec == UNIFORM_4
    assert fields(control.to_json())["training"]["codec"] == UNIFORM_4


@pytest.mark.parametrize("name", ["fp32", "fp16", "qsgd", "sign", "topk"])
def test_every_codec_id_is_canonicalised(name):
    config = {"id": get_codec(name).codec_id}
    control = parse(Control, json.dumps({"training": {"codec": config}}))
    assert control.training.codec == get_codec(name).get_config()


def test_topk_value_codec_is_completed_too():
    control = parse(Control, b'{"training":{"codec":{"id":"topk","values":{"id":"uniform"}}}}')
    assert control.training.codec["values"] == get_codec({"id": "uniform"}).get_config()
    assert control.training.codec["fraction"] == 0.01


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"id": "zstd"}, "unknown codec id 'zstd'"),
        ({"bits": 4}, "id"),
        ({"id": "uniform", "bits": 3}, "bits"),
        ({"id": "uniform", "bitz": 4}, "bitz"),
        ({"id": "topk", "fraction": 0}, "fraction"),
        ({"id": "topk", "values": {"id": "topk"}}, "topk"),
    ],
    ids=["unknown id", "no id", "bad bits", "unknown parameter", "zero fraction", "nested topk"],
)
def test_bad_codec_config_is_refused(config, message):
    text = refused(Control, json.dumps({"training": {"codec": config}}), "training.codec")
    assert message in text


def test_messages_are_immutable():
    status = parse(AgentStatus, b'{"agent":"a","state":"online"}')
    with pytest.raises(ValueError, match="frozen"):
        status.agent = "b"  # type: ignore[misc]
