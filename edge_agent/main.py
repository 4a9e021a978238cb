"""Start an agent from settings, with signal handling."""

from __future__ import annotations

import asyncio
import os
import signal

from configs.agent import AgentSettings
from edge_agent.agent import Agent


async def serve(settings: AgentSettings) -> int:
    if settings.nice:
        os.nice(settings.nice)

    agent = Agent(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, agent.stop_event.set)
    return await agent.run()


def run(settings: AgentSettings) -> int:
    return asyncio.run(serve(settings))
