"""`exitguard exit`: paper by default, --live against the fake CLOB, and nothing sent on bad input."""

from __future__ import annotations

import argparse
import io
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from fakeclob import FakeClob

from exitguard.cli import exit as exit_command

TOKEN = "71321045679252212594626385532706912750332728571942532289631379312455583992563"


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    exit_command.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["exit", *argv])


def run(*argv: str, environ: dict[str, str] | None = None, answer: str | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    asked: list[str] = []

    def ask(prompt: str) -> str:
        asked.append(prompt)
        if answer is None:
            raise EOFError
        return answer

    code = exit_command.run(parse(*argv, "--log-level", "CRITICAL"), out=out, err=err, environ=environ or {}, ask=ask)
    return code, out.getvalue(), err.getvalue() + "".join(asked)


@pytest.fixture(autouse=True)
def state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A live exit journals in the per-user state directory by default: the test's folder, never the real home."""
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


@pytest.fixture
def clob() -> Iterator[FakeClob]:
    with FakeClob() as fake:
        fake.stock(TOKEN, Decimal("7.5"))
        yield fake


def live_env(clob: FakeClob, **extra: str) -> dict[str, str]:
    return {"POLYMARKET_HOST": clob.host or "", "POLYMARKET_PRIVATE_KEY": clob.private_key,
            "POLYMARKET_API_KEY": clob.creds.api_key, "POLYMARKET_API_SECRET": clob.creds.api_secret,
            "POLYMARKET_API_PASSPHRASE": clob.creds.api_passphrase, **extra}


def test_paper_is_the_default_and_sells_the_verified_balance() -> None:
    code, out, _ = run("--token", "tok", "--shares", "10", "--limit-price", "0.55", "--paper-balance", "7.5")
    assert code == 0
    assert "paper exchange: CLOSED" in out and "sold 7.5" in out


def test_live_with_yes_sells_through_the_real_client(clob: FakeClob) -> None:
    code, out, _ = run("--token", TOKEN, "--shares", "10", "--limit-price", "0.55", "--live", "--yes",
                       environ=live_env(clob))
    assert code == 0, out
    assert "CLOSED" in out and "sold 7.5" in out and "settlement on chain: pending" in out
    assert [b["order"]["makerAmount"] for b in clob.posted_orders] == ["7500000"]


def test_live_asks_first_and_sends_nothing_unless_confirmed(clob: FakeClob) -> None:
    for answer in (None, "no", "y"):
        code, _, err = run("--token", TOKEN, "--shares", "10", "--limit-price", "0.55", "--live",
                           environ=live_env(clob), answer=answer)
        assert code == 4 and "nothing sent" in err and "Type 'yes'" in err
    assert clob.requests == []
    code, out, _ = run("--token", TOKEN, "--shares", "10", "--limit-price", "0.55", "--live",
                       environ=live_env(clob), answer="yes")
    assert code == 0 and "CLOSED" in out


@pytest.mark.parametrize(("argv", "env", "named"), [
    (("--shares", "ten"), {}, "--shares"),
    (("--shares", "-1"), {}, "shares"),
    (("--limit-price", "1.5"), {}, "--limit-price"),
    (("--limit-price", "nan"), {}, "--limit-price"),
    (("--live", "--yes"), {"POLYMARKET_PRIVATE_KEY": ""}, "POLYMARKET_PRIVATE_KEY"),
    (("--live", "--yes"), {"POLYMARKET_CHAIN_ID": "x"}, "POLYMARKET_CHAIN_ID"),
    (("--live", "--yes"), {"POLYMARKET_API_SECRET": ""}, "POLYMARKET_API_SECRET"),
    (("--live", "--yes"), {"POLYMARKET_SIGNATURE_TYPE": "1"}, "POLYMARKET_FUNDER"),
])
def test_bad_input_or_settings_name_the_culprit_and_send_nothing(
        clob: FakeClob, argv: tuple[str, ...], env: dict[str, str], named: str) -> None:
    base = {"--token": TOKEN, "--shares": "10", "--limit-price": "0.55"}
    flags = list(argv)
    for flag, value in base.items():
        if flag not in flags:
            flags += [flag, value]
    code, _, err = run(*flags, environ=live_env(clob, **env))
    assert code == 2 and named in err and "nothing sent" in err
    assert clob.private_key not in err and clob.creds.api_secret not in err
    assert clob.requests == []


def test_live_without_api_credentials_derives_them_from_the_key(clob: FakeClob) -> None:
    env = {"POLYMARKET_HOST": clob.host or "", "POLYMARKET_PRIVATE_KEY": clob.private_key}
    code, out, _ = run("--token", TOKEN, "--shares", "7.5", "--limit-price", "0.55", "--live", "--yes", environ=env)
    assert code == 0 and "CLOSED" in out
    assert clob.count("GET", "/auth/derive-api-key") == 1


def test_every_outcome_has_an_exit_code() -> None:
    from exitguard.position import ExitOutcome

    assert set(exit_command.EXIT_CODES) == set(ExitOutcome)


def test_live_exit_on_a_closed_market_says_redeem_and_exits_5_with_nothing_sent(clob: FakeClob) -> None:
    clob.close_market(TOKEN)
    code, out, _ = run("--token", TOKEN, "--shares", "10", "--limit-price", "0.55", "--live", "--yes",
                       environ=live_env(clob))
    assert code == 5, out
    assert "MARKET_CLOSED (state OPEN)" in out and "redeem the shares" in out and "sold 0" in out
    assert clob.posted_orders == []
