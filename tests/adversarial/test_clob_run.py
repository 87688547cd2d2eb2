"""The adversarial run against the fake CLOB through the real PolymarketExchange and py-clob-client-v2 (issue 11,
point D): the fake's own switches (documented refusals, gateway statuses, HTML bodies, lost answers, failing
order / trade / balance reads, buys the balance cache has not seen), fewer steps than on paper."""

from __future__ import annotations

from pathlib import Path

import pytest

from adversarial.clob_run import run_clob

STEPS = 300


@pytest.mark.parametrize("seed", [1])
def test_the_promise_holds_against_the_fake_clob(seed: int, tmp_path: Path) -> None:
    report = run_clob(seed, STEPS, tmp_path)
    assert not report.violations, report.explain()
    assert report.steps == STEPS and sum(report.faults.values()) > 20
