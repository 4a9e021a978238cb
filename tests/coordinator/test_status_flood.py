"""A device that flaps its own status online/offline must not make the coordinator journal
(and fsync, under the strategy lock) every flap: it is followed up to a burst, and the
heartbeat brings the strategy's count of agents online up to date afterwards."""

from __future__ import annotations

import asyncio
from pathlib import Path

from common.messages import AgentState, AgentStatus
from coordinator.journal import ONLINE
from tests.coordinator.test_replay import STRATEGIES, make_settings, start


def status(agent: str, online: bool) -> bytes:
    state = AgentState.ONLINE if online else AgentState.OFFLINE
    return AgentStatus(agent=agent, state=state).to_json()


def test_a_flapping_agent_is_followed_only_up_to_a_burst(tmp_path: Path):
    settings = make_settings(tmp_path, STRATEGIES["fedavg"])

    async def scenario() -> tuple[int, int, int]:
        coordinator = await start(settings)
        await coordinator._on_agent_status("steady", status("steady", True))
        for flap in range(200):
            await coordinator._on_agent_status("flapper", status("flapper", flap % 2 == 0))
        records = [r for r in coordinator.journal.records_after(0) if r.kind == ONLINE]
        followed = coordinator._online
        await coordinator._sync_online()  # what the heartbeat does
        coordinator.journal.close()
        return len(records), followed, coordinator._online

    journaled, _, after_heartbeat = asyncio.run(scenario())
    assert journaled <= 8, f"{journaled} online changes journaled for 200 flaps"
    assert after_heartbeat == 1  # the flapper ended offline: only "steady" is online
