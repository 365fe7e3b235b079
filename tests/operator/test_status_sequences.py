"""Invariants of desired_status over many random sequences of observations.

Whatever order the operator sees things in (restarts, stale caches, Kueue preempting,
pods failing and being replaced), the status it writes must stay valid and honest.
"""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

import pytest
from sift_operator.events import transition_events
from sift_operator.status import Observed, Problem, desired_status, is_terminal, phase_of
from sift_worker.api.v1alpha1 import SelectionRunStatus
from test_status import (
    CONFIG_POD,
    IMAGE_POD,
    KUEUE,
    RUNNING_POD,
    T0,
    UNSCHEDULABLE_POD,
    jcond,
    job,
    pod,
    run,
)

POOL: list[Observed] = [
    Observed(1, None),
    Observed(1, None, waiting_for_slot=True),
    Observed(1, None, problems=[Problem("SecretNotFound", "Secret s3-reader does not exist")]),
    Observed(1, job(suspend=True, labels=KUEUE)),
    Observed(1, job(suspend=True), waiting_for_slot=True),
    Observed(1, job(active=1), pods=[pod()]),
    Observed(1, job(active=1), pods=[UNSCHEDULABLE_POD]),
    Observed(1, job(active=1), pods=[IMAGE_POD]),
    Observed(1, job(active=1), pods=[CONFIG_POD]),
    Observed(1, job(), problems=[Problem("QuotaExceeded", "exceeded quota")]),
    Observed(1, job(active=1, ready=1), pods=[RUNNING_POD],
             progress={"stage": "embed", "done": 3, "total": 9}),
    Observed(2, job(active=1, ready=1), pods=[RUNNING_POD], spec_change_ignored=True),
    Observed(1, job(active=1, failed=1), pods=[pod("Failed"), pod()]),
    Observed(1, job(conditions=[jcond("Complete")], completionTime="2026-12-01T11:00:00Z"),
             result={"selected": 5, "total": 9}),
    Observed(1, job(conditions=[jcond("Failed", "BackoffLimitExceeded")])),
    Observed(1, job(conditions=[jcond("FailureTarget", "PodFailurePolicy")])),
    Observed(1, job(active=1, ready=1), pods=[RUNNING_POD], egress="NetworkPolicyAndCilium"),
]  # fmt: skip


def _changed(old: dict[str, Any] | None, new: dict[str, Any]) -> bool:
    return old is None or (old["status"], old["reason"]) != (new["status"], new["reason"])


@pytest.mark.parametrize("seed", range(20))
def test_random_sequences_keep_the_invariants(seed: int) -> None:
    rng = random.Random(seed)
    for _walk in range(10):
        doc = run(queue=rng.random() < 0.3, suspend=rng.random() < 0.2)
        now = T0
        outcome: str | None = None
        start = completion = None
        for _ in range(10):
            observed = rng.choice(POOL)
            now += timedelta(seconds=rng.randint(0, 600))
            old = doc.get("status")
            new = desired_status(doc, observed, now)
            SelectionRunStatus.model_validate(new)
            conds = {c["type"]: c for c in new["conditions"]}
            assert new["phase"] == phase_of(new["conditions"])
            assert not (conds["Succeeded"]["status"] == conds["Failed"]["status"] == "True")
            if conds["Running"]["status"] == "True":
                assert conds["Accepted"]["status"] == "True"
                assert conds["Queued"]["status"] == "False"
            # a decided outcome never changes, nor do its times
            if outcome is not None:
                assert new["phase"] == outcome
                assert new.get("completionTime") == completion
            if is_terminal(new):
                outcome = new["phase"]
                completion = new["completionTime"]
            # startTime, once known, stays
            if start is not None:
                assert new["startTime"] == start
            start = new.get("startTime", start)
            # lastTransitionTime moves exactly when the condition's status moves
            before = {c["type"]: c for c in (old or {}).get("conditions", [])}
            for type_, cond in conds.items():
                prev = before.get(type_)
                if prev is not None and prev["status"] == cond["status"]:
                    assert cond["lastTransitionTime"] == prev["lastTransitionTime"]
                else:
                    assert cond["lastTransitionTime"] == now.strftime("%Y-%m-%dT%H:%M:%SZ")
            # events only when something changed
            events = transition_events(old, new)
            if events:
                assert any(_changed(before.get(t), c) for t, c in conds.items()) or any(
                    c["reason"] == "SpecChangeIgnored" for c in conds.values()
                )
            doc["status"] = new
