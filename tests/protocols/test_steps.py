"""Stepped computations run at once (a forked child's snapshot, a one-call restore)."""

from __future__ import annotations

from appliance.protocols.steps import Steps, drain


def test_drain_runs_steps_to_their_result() -> None:
    ran: list[int] = []

    def steps() -> Steps[str]:
        for i in range(3):
            ran.append(i)
            yield
        return "done"

    assert drain(steps()) == "done"
    assert ran == [0, 1, 2]
