"""The topic tree ``<prefix>/<job>/...``: every topic under its job, agent ids recovered from
update and status topics of this job only, and names that are not one topic level refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from codec.envelope import IDENTIFIER
from common.errors import ProtocolError
from common.topics import Topics, check_level

TOPICS = Topics("fedmq", "digits")
identifiers = st.from_regex(IDENTIFIER, fullmatch=True)

BAD_LEVELS = {
    "empty": "",
    "slash": "a/b",
    "single-level wildcard": "+",
    "multi-level wildcard": "#",
    "wildcard inside": "agent+1",
    "leading dot": ".hidden",
    "leading dash": "-x",
    "leading underscore": "_x",
    "space": "agent 1",
    "non-ASCII": "agént",
    "NUL": "a\x00b",
    "trailing newline": "agent\n",
    "129 characters": "a" * 129,
}


def test_every_topic_is_under_prefix_and_job():
    topics = Topics("fl", "mnist-2")
    assert topics.root == "fl/mnist-2"
    assert topics.model == "fl/mnist-2/model"
    assert topics.control == "fl/mnist-2/control"
    assert topics.coordinator_status == "fl/mnist-2/coordinator/status"
    assert topics.events == "fl/mnist-2/events"
    assert topics.update("jetson-1") == "fl/mnist-2/update/jetson-1"
    assert topics.agent_status("jetson-1") == "fl/mnist-2/agents/jetson-1/status"
    assert topics.all_updates == "fl/mnist-2/update/+"
    assert topics.all_agent_statuses == "fl/mnist-2/agents/+/status"


@given(prefix=identifiers, job=identifiers, agent=identifiers)
def test_update_and_status_topics_round_trip(prefix, job, agent):
    topics = Topics(prefix, job)
    assert topics.agent_of_update(topics.update(agent)) == agent
    assert topics.agent_of_status(topics.agent_status(agent)) == agent
    # and neither is mistaken for the other
    assert topics.agent_of_update(topics.agent_status(agent)) is None
    assert topics.agent_of_status(topics.update(agent)) is None


@pytest.mark.parametrize("longest", ["a" * 128, "A1_.-" + "z" * 123])
def test_longest_names_are_accepted(longest):
    assert check_level("agent id", longest) == longest
    assert TOPICS.agent_of_update(TOPICS.update(longest)) == longest


@pytest.mark.parametrize(
    "topic",
    [
        "fedmq/other/update/a",
        "fedmq/digits2/update/a",
        "fedmq/digit/update/a",
        "other/digits/update/a",
        "fedmq/digits/update",
        "fedmq/digits/update/",
        "fedmq/digits/update/+",
        "fedmq/digits/update/#",
        "fedmq/digits/update/a/b",
        "fedmq/digits/update/a/",
        "fedmq/digits/update/.a",
        "fedmq/digits/model",
        "fedmq/digits/agents/a/status",
        "/fedmq/digits/update/a",
        "fedmq/digits/update/" + "a" * 129,
    ],
)
def test_agent_of_update_is_none_for_any_other_topic(topic):
    assert TOPICS.agent_of_update(topic) is None


@pytest.mark.parametrize(
    "topic",
    [
        "fedmq/other/agents/a/status",
        "fedmq/digits2/agents/a/status",
        "other/digits/agents/a/status",
        "fedmq/digits/agents/status",
        "fedmq/digits/agents//status",
        "fedmq/digits/agents/+/status",
        "fedmq/digits/agents/#/status",
        "fedmq/digits/agents/a/b/status",
        "fedmq/digits/agents/a/status/extra",
        "fedmq/digits/agents/a/statuses",
        "fedmq/digits/agents/-a/status",
        "fedmq/digits/coordinator/status",
        "fedmq/digits/update/a",
    ],
)
def test_agent_of_status_is_none_for_any_other_topic(topic):
    assert TOPICS.agent_of_status(topic) is None


def test_other_jobs_topics_are_not_this_jobs():
    other = Topics("fedmq", "other")
    assert TOPICS.agent_of_update(other.update("a")) is None
    assert TOPICS.agent_of_status(other.agent_status("a")) is None
    assert Topics("elsewhere", "digits").agent_of_update(TOPICS.update("a")) is None


@pytest.mark.parametrize("name", BAD_LEVELS.values(), ids=BAD_LEVELS.keys())
@pytest.mark.parametrize("kind", ["prefix", "job"])
def test_invalid_prefix_or_job_is_refused(kind, name):
    args = {"prefix": "fedmq", "job": "digits", kind: name}
    with pytest.raises(ProtocolError, match="is not a valid topic level") as raised:
        Topics(**args)
    assert repr(name) in str(raised.value)
    assert ("topic prefix" if kind == "prefix" else "job id") in str(raised.value)


@pytest.mark.parametrize("name", BAD_LEVELS.values(), ids=BAD_LEVELS.keys())
def test_invalid_agent_id_is_refused(name):
    with pytest.raises(ProtocolError, match=r"agent id .* is not a valid topic level"):
        TOPICS.update(name)
    with pytest.raises(ProtocolError, match=r"agent id .* is not a valid topic level"):
        TOPICS.agent_status(name)


def test_topics_are_values():
    assert Topics("fedmq", "digits") == TOPICS
    assert hash(Topics("fedmq", "digits")) == hash(TOPICS)
    with pytest.raises(AttributeError):
        TOPICS.job = "other"  # type: ignore[misc]
