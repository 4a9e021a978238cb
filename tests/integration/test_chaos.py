"""The chaos test (issue 4): six real agents train through three coordinator SIGKILLs, two
broker restarts and random agent SIGKILLs; the run is then audited from the coordinator's
ledger and the agents' delivery logs (benchmarks/chaos.py has the harness and a longer run)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from benchmarks.chaos import ChaosRun, ChaosSettings


def test_training_survives_crashes_and_outages_losing_nothing(tmp_path: Path):
    settings = ChaosSettings(
        agents=6,
        coordinator_kills=3,
        broker_restarts=2,
        agent_kills=3,
        interval=4.0,
        target_accuracy=0.85,
        max_seconds=400,
    )
    report = asyncio.run(ChaosRun(settings, tmp_path / "chaos").run_chaos())
    print(report.summary())

    assert report.kills == {"coordinator": 3, "broker": 2, "agent": 3}
    assert report.reached, report.summary()
    assert report.versions_increasing, report.versions
    assert report.sent > 0 and report.accepted > 0
    assert report.accepted_twice == [], "an update applied twice"
    assert report.lost == [], "an update the broker acknowledged was never decided"
    assert report.unexpected_exits == []
    assert set(report.exit_codes.values()) == {0}, report.exit_codes
