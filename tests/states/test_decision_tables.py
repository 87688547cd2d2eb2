"""The decision tables beside the machine: every edge reports from data, every answer class has a rule,
and an interrupted or restarted position is settled through a real edge."""

from __future__ import annotations

import inspect

import pytest

import exitguard.errors as errors
from exitguard.states import (
    INTERRUPTED,
    REPORTS,
    RESTARTED,
    SELL_ANSWERS,
    TABLE,
    AnswerEffect,
    BalanceKind,
    BalanceVerdict,
    PositionRecord,
    SellAnswer,
    Settle,
    State,
    fire,
)
from exitguard.telemetry.logs import EVENTS

TEN = 10_000_000


def test_every_edge_has_exactly_one_report_row() -> None:
    assert {(edge.trigger, edge.dest) for edge in TABLE} == set(REPORTS)


@pytest.mark.parametrize("key", list(REPORTS), ids=[f"{t}->{d}" for t, d in REPORTS])
def test_report_events_are_known_log_events(key: tuple[str, State]) -> None:
    event = REPORTS[key].event
    assert event is None or event in EVENTS


def test_an_edge_that_ends_an_exit_says_so_in_its_log() -> None:
    """An outcome handed back to the bot is never silent in the log."""
    for key, report in REPORTS.items():
        if report.outcome is not None:
            assert report.event is not None, key


def test_every_answer_class_has_a_rule_and_each_rule_leaves_selling_through_an_edge() -> None:
    assert set(SELL_ANSWERS) == set(SellAnswer)
    selling = {edge.trigger for edge in TABLE if edge.source is State.SELLING}
    for answer, rule in SELL_ANSWERS.items():
        assert rule.trigger in selling, answer
        assert not rule.retryable or rule.trigger == "sell_killed", f"{answer}: only a definite no may retry"


def test_only_a_definite_no_reopens_and_unknown_never_retries() -> None:
    unknown = SELL_ANSWERS[SellAnswer.UNKNOWN]
    assert (unknown.trigger, unknown.retryable, unknown.effects) == ("sell_unknown", False, ())
    assert SELL_ANSWERS[SellAnswer.FILLED].trigger == "sell_filled"
    assert AnswerEffect.REFRESH_BALANCE_FIRST in SELL_ANSWERS[SellAnswer.INSUFFICIENT_BALANCE].effects


EXCHANGE_ERRORS = [cls for _, cls in inspect.getmembers(errors, inspect.isclass)
                   if issubclass(cls, errors.ExchangeError)]


@pytest.mark.parametrize("cls", EXCHANGE_ERRORS, ids=[cls.__name__ for cls in EXCHANGE_ERRORS])
def test_each_typed_answer_is_one_answer_class(cls: type[errors.ExchangeError]) -> None:
    # Nothing sold: a "no" of the exchange (sell_killed, market_closed), or an order the adapter never sent
    # (sell_expired).
    assert cls.definitely_not_filled is (SELL_ANSWERS[cls.answer].trigger in ("sell_killed", "sell_expired",
                                                                               "market_closed"))
    assert errors.answer_of(cls("x")) is cls.answer


@pytest.mark.parametrize("raised", [TimeoutError(), OSError("connection reset"), RuntimeError("adapter bug")])
def test_anything_untyped_is_unknown(raised: BaseException) -> None:
    assert errors.answer_of(raised) is SellAnswer.UNKNOWN


def _record_in(state: State, *, in_flight: bool) -> PositionRecord:
    record = PositionRecord("p1", "tok", TEN)
    fire(record, "request_exit", reason="r", limit_price=None, attempt_id="a1")
    if state is State.SELLING:
        verdict = BalanceVerdict(BalanceKind.SELLABLE, TEN, TEN, TEN, 0)
        fire(record, "balance_fetched", verdict=verdict, verified_at=1.0)
        if in_flight:
            record.inflight, record.permit = record.permit, None
    return record


ROWS = [(name, key, row) for name, table in (("interrupted", INTERRUPTED), ("restarted", RESTARTED))
        for key, row in table.items()]


@pytest.mark.parametrize("name,key,row", ROWS, ids=[f"{n}-{k[0]}-{k[1]}" for n, k, _ in ROWS])
def test_an_interrupted_or_restarted_position_is_settled_through_an_edge(name: str, key: tuple[State, bool],
                                                                        row: Settle) -> None:
    state, sent = key
    record = _record_in(state, in_flight=sent)
    dest = fire(record, row.trigger, **row.payload)
    assert (row.trigger, dest) in REPORTS
    if row.look_up:
        assert dest is State.SELLING and record.unresolved
    else:
        assert dest is State.OPEN and record.inflight is None


def test_a_closed_market_is_its_own_outcome_never_retried_with_the_hint_to_redeem() -> None:
    from exitguard.states import REDEEM_HINT, ExitOutcome

    rule = SELL_ANSWERS[SellAnswer.MARKET_CLOSED]
    assert (rule.trigger, rule.retryable) == ("market_closed", False)
    assert AnswerEffect.REMEMBER_MARKET_CLOSED in rule.effects
    for source in (State.VERIFYING, State.SELLING):
        [edge] = [e for e in TABLE if e.source is source and e.trigger == "market_closed"]
        assert edge.dest is State.OPEN, "the shares are still held: OPEN, to be redeemed"
    report = REPORTS[("market_closed", State.OPEN)]
    assert (report.event, report.outcome, report.hint) == ("exit_market_closed", ExitOutcome.MARKET_CLOSED,
                                                           REDEEM_HINT)
    assert str(ExitOutcome.MARKET_CLOSED) == "MARKET_CLOSED"
