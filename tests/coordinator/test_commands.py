"""Operator commands survive restarts exactly once: a `stop` whose acknowledgement never
went out (it waited behind unjournaled updates) is redelivered after the restart; the
coordinator must recognise it and not stop again, nor undo a later `resume`."""

from __future__ import annotations

import asyncio
from pathlib import Path

from common.messages import Command, CommandAction, RunState
from tests.coordinator.test_replay import STRATEGIES, finish, make_settings, start


def test_a_redelivered_command_is_not_applied_again_after_a_restart(tmp_path: Path):
    settings = make_settings(tmp_path, STRATEGIES["fedbuff"])
    stop = Command(action=CommandAction.STOP, id="stop-1").to_json()
    resume = Command(action=CommandAction.RESUME, id="resume-1").to_json()

    async def scenario() -> tuple[RunState, bool, RunState, RunState]:
        first = await start(settings)
        await first._on_command(stop)
        stopped, asked_to_exit = first.control.state, first.stop_event.is_set()
        await finish(first)

        second = await start(settings)  # resumed: the control says stop
        await second._on_command(resume)  # the operator resumes
        await second._on_command(stop)  # the broker redelivers the old stop
        after_redelivery = second.control.state
        exits = second.stop_event.is_set()
        await finish(second)

        third = await start(settings)
        third.journal.close()
        return stopped, asked_to_exit and not exits, after_redelivery, third.control.state

    stopped, only_first_exits, after_redelivery, after_restart = asyncio.run(scenario())
    assert stopped == RunState.STOP
    assert only_first_exits
    assert after_redelivery == RunState.RUN  # the later resume stands
    assert after_restart == RunState.RUN  # and is durable
