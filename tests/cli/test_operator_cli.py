"""The operator CLI around the journal (issue 13, section 2): journaled one-off exits, `reconcile`, `check`,
one line and code 2 for bad input, Ctrl-C as code 130 with the position's true state, network errors that
name the host, `status` with the fill and `history` in shares and wall-clock times."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import anyio
import pytest
from fakeclob import FakeClob

from exitguard import ExitEngine, ExitOutcome, Position
from exitguard.cli import main as cli
from exitguard.cli.statedir import state_dir
from exitguard.exchange.polymarket import PolymarketExchange, PolymarketSettings
from exitguard.journal import Journal

TOKEN = "71321045679252212594626385532706912750332728571942532289631379312455583992563"


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The per-user state directory of live exits lands in the test's folder, never the real home."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    for name in [n for n in os.environ if n.startswith("POLYMARKET_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "home"


@pytest.fixture
def clob() -> Iterator[FakeClob]:
    with FakeClob() as fake:
        fake.stock(TOKEN, Decimal("7.5"))
        yield fake


def live_env(clob: FakeClob, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"POLYMARKET_HOST": clob.host or "", "POLYMARKET_PRIVATE_KEY": clob.private_key,
                        "POLYMARKET_API_KEY": clob.creds.api_key, "POLYMARKET_API_SECRET": clob.creds.api_secret,
                        "POLYMARKET_API_PASSPHRASE": clob.creds.api_passphrase}.items():
        monkeypatch.setenv(name, value)


def cli_run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def journal_with_unknown(path: Path, clob: FakeClob) -> str:
    """A journal whose position p1 is SELLING with an unknown outcome: the fake executed the order and lost
    its answer, and the lookup in that process found nothing yet (the order endpoint forgets finished orders)."""
    clob.forget_finished_orders = "404"

    async def go() -> str:
        settings = PolymarketSettings(clob.private_key, host=clob.host or "", api_key=clob.creds.api_key,
                                      api_secret=clob.creds.api_secret, api_passphrase=clob.creds.api_passphrase)
        exchange = PolymarketExchange.from_settings(settings)
        async with ExitEngine(exchange, journal=path, settlement_poll_interval=None,
                              resolve_backoff=(3600, 3600)) as engine:
            engine.track(Position(key="p1", token_id=TOKEN, shares=Decimal("7.5")))
            clob.lose_next_response("/order")  # executed, its answer lost; no lookup runs in this process
            result = await engine.exit("p1", reason="test", limit_price=Decimal("0.55"))
            assert result.outcome is ExitOutcome.UNKNOWN, result
            return result.order_id or ""

    return anyio.run(go)


# -- every path and its exit code ------------------------------------------------------------------

@pytest.mark.parametrize(("argv", "code", "says"), [
    # exit: bad input is one line and code 2, never a traceback
    (("exit", "--token", "tok", "--shares", "10", "--limit-price", "0.555"), 2, "tick size 0.01"),
    (("exit", "--token", "tok", "--shares", "-3", "--limit-price", "0.55"), 2, "shares"),
    (("exit", "--token", "tok", "--shares", "1e30", "--limit-price", "0.55"), 2, "--shares"),
    (("exit", "--token", "tok", "--shares", "ten", "--limit-price", "0.55"), 2, "--shares"),
    (("exit", "--token", "tok", "--limit-price", "0.55"), 2, "--shares"),
    (("exit", "--shares", "10", "--limit-price", "0.55"), 2, "--token"),
    (("exit", "--token", "tok", "--shares", "10", "--limit-price", "0.55", "--journal", "j", "--no-journal"), 2,
     "--no-journal"),
    (("exit", "--key", "K", "--limit-price", "0.55"), 2, "--journal"),
    (("exit", "--token", "tok", "--shares", "10", "--limit-price", "0.55", "--paper-latency", "-1"), 2,
     "--paper-latency"),
    (("exit", "--token", "tok", "--shares", "10", "--limit-price", "0.55", "--journal", "no/such/dir/j"), 2,
     "does not exist"),
    (("exit", "--token", "tok", "--shares", "10", "--limit-price", "0.55", "--live", "--yes"), 2,
     "POLYMARKET_PRIVATE_KEY"),
    # exit: outcomes
    (("exit", "--token", "tok", "--shares", "10", "--limit-price", "0.55"), 0, "CLOSED"),
    (("exit", "--token", "tok", "--shares", "10", "--limit-price", "0.55", "--paper-balance", "0"), 0,
     "ALREADY_EXITED"),
    (("exit", "--token", "tok", "--shares", "10", "--limit-price", "0.55", "--paper-balance", "1"), 0, "DUST"),
    # status / history / reconcile / check: missing files and keys, missing --live
    (("status", "--journal", "missing.journal"), 2, "no such file"),
    (("history", "k", "--journal", "missing.journal"), 2, "no such file"),
    (("reconcile", "--journal", "missing.journal", "--live"), 2, "no such file"),
    (("check",), 2, "--live"),
    (("check", "--live"), 1, "POLYMARKET_PRIVATE_KEY"),
    (("check", "--live", "--journal", "missing.journal"), 2, "no such file"),
])
def test_every_cli_path_has_its_exit_code_and_one_line(
        capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], code: int, says: str) -> None:
    got, out, err = cli_run(capsys, *argv, *(("--log-level", "CRITICAL") if argv[0] == "exit" else ()))
    assert got == code, (out, err)
    assert says in out + err
    assert "Traceback" not in err
    if code == 2:
        assert len([line for line in err.splitlines() if "|" not in line and line.strip()]) == 1, err


def test_off_tick_limit_price_is_bad_input_not_try_again(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli_run(capsys, "exit", "--token", "tok", "--shares", "10", "--limit-price", "0.555",
                           "--log-level", "CRITICAL")
    assert code == 2
    assert "not on the market's tick size" in err and "nothing sent" in err and "Traceback" not in err


def test_unknown_key_and_bad_journal_are_code_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    journal = tmp_path / "j.journal"
    assert cli_run(capsys, "exit", "--token", "tok", "--shares", "10", "--limit-price", "0.55",
                   "--journal", str(journal), "--key", "K", "--log-level", "CRITICAL")[0] == 0
    code, _, err = cli_run(capsys, "reconcile", "--journal", str(journal), "nope", "--live")
    assert code == 2 and "POLYMARKET_PRIVATE_KEY" in err  # settings are read first: nothing else runs
    junk = tmp_path / "junk.journal"
    junk.write_text("not a database")
    for argv in (("status", "--journal", str(junk)), ("exit", "--key", "K", "--limit-price", "0.55", "--journal",
                                                      str(junk), "--log-level", "CRITICAL")):
        code, _, err = cli_run(capsys, *argv)
        assert code == 2 and str(junk) in err and "Traceback" not in err


# -- exit with a journal ---------------------------------------------------------------------------

def test_journaled_exit_is_recorded_and_a_finished_key_is_not_exited_again(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    journal = tmp_path / "exits.journal"
    argv = ("exit", "--token", "tok", "--shares", "10", "--limit-price", "0.55", "--journal", str(journal),
            "--key", "K", "--log-level", "CRITICAL")
    code, out, _ = cli_run(capsys, *argv)
    assert code == 0 and "CLOSED" in out and f"journal {journal}, key K" in out
    code, out, _ = cli_run(capsys, *argv)
    assert code == 0 and "already CLOSED; nothing sent" in out
    code, _, err = cli_run(capsys, "exit", "--token", "other", "--shares", "10", "--limit-price", "0.55",
                           "--journal", str(journal), "--key", "K", "--log-level", "CRITICAL")
    assert code == 2 and "not --token other" in err


def test_live_exit_journals_in_the_user_state_directory_by_default(
        capsys: pytest.CaptureFixture[str], clob: FakeClob, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    live_env(clob, monkeypatch)
    code, out, _ = cli_run(capsys, "exit", "--token", TOKEN, "--shares", "10", "--limit-price", "0.55", "--live",
                           "--yes", "--log-level", "CRITICAL")
    assert code == 0, out
    journal = home / ".local" / "state" / "exitguard" / "exits.journal"
    assert f"journal {journal}, key exit-{TOKEN}" in out
    with _closing(journal) as opened:
        [position] = opened.positions()
    assert position.key == f"exit-{TOKEN}" and str(position.state) == "CLOSED"


class _closing:
    def __init__(self, path: Path) -> None:
        self.journal = Journal.open(path, readonly=True)

    def __enter__(self) -> Journal:
        return self.journal

    def __exit__(self, *exc: object) -> None:
        self.journal.close()


def test_no_journal_keeps_no_file(capsys: pytest.CaptureFixture[str], clob: FakeClob, home: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    live_env(clob, monkeypatch)
    code, _, _ = cli_run(capsys, "exit", "--token", TOKEN, "--shares", "10", "--limit-price", "0.55", "--live",
                         "--yes", "--no-journal", "--log-level", "CRITICAL")
    assert code == 0 and not (home / ".local" / "state" / "exitguard" / "exits.journal").exists()


def test_state_dir_follows_each_platform_convention(tmp_path: Path) -> None:
    assert state_dir({}, platform="linux", home=tmp_path) == tmp_path / ".local/state/exitguard"
    assert state_dir({"XDG_STATE_HOME": "/x/state"}, platform="linux", home=tmp_path) == Path("/x/state/exitguard")
    assert state_dir({"XDG_STATE_HOME": "relative"}, platform="linux", home=tmp_path) == \
        tmp_path / ".local/state/exitguard"
    assert state_dir({}, platform="darwin", home=tmp_path) == tmp_path / "Library/Application Support/exitguard"
    assert state_dir({"LOCALAPPDATA": "C:/Users/u/AppData/Local"}, platform="win32", home=tmp_path) == \
        Path("C:/Users/u/AppData/Local/exitguard")


def test_journal_held_by_a_running_engine_is_refused_naming_its_pid(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    journal = tmp_path / "bot.journal"
    proc = subprocess.Popen([sys.executable, "-c", (
        "import anyio, sys\n"
        "from exitguard import ExitEngine, PaperExchange\n"
        "async def main():\n"
        f"    async with ExitEngine(PaperExchange(), journal={str(journal)!r}):\n"
        "        print('ready', flush=True)\n"
        "        sys.stdin.readline()\n"
        "anyio.run(main)\n")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        code, _, err = cli_run(capsys, "exit", "--token", "tok", "--shares", "10", "--limit-price", "0.55",
                               "--journal", str(journal), "--key", "K", "--log-level", "CRITICAL")
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(30)
    assert code == 2 and f"pid {proc.pid}" in err and "one engine per journal" in err and "nothing sent" in err


# -- reconcile ---------------------------------------------------------------------------------------

def test_reconcile_settles_an_unknown_outcome_from_the_shell(
        capsys: pytest.CaptureFixture[str], clob: FakeClob, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    journal = tmp_path / "exits.journal"
    order = journal_with_unknown(journal, clob)
    code, out, _ = cli_run(capsys, "status", "--journal", str(journal))
    assert "UNRESOLVED" in out and f"exitguard reconcile --journal {journal} --live" in out
    assert "call" not in out.lower() or "Python" not in out
    posted = len(clob.posted_orders)
    live_env(clob, monkeypatch)
    code, out, _ = cli_run(capsys, "reconcile", "--journal", str(journal), "--live")
    assert code == 0, out
    assert "p1: CLOSED" in out and f"order {order}" in out
    assert len(clob.posted_orders) == posted  # looked up, never resent
    code, out, _ = cli_run(capsys, "reconcile", "--journal", str(journal), "--live")
    assert code == 0 and "no unknown outcomes" in out


def test_reconcile_says_still_unknown_with_code_3(
        capsys: pytest.CaptureFixture[str], clob: FakeClob, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    journal = tmp_path / "exits.journal"
    journal_with_unknown(journal, clob)
    clob.fail_next(50, 500, path="/data/trades")
    live_env(clob, monkeypatch)
    code, out, _ = cli_run(capsys, "reconcile", "--journal", str(journal), "p1", "--live")
    assert code == 3 and "p1: UNKNOWN" in out and "still unknown" in out
    code, _, err = cli_run(capsys, "reconcile", "--journal", str(journal), "nope", "--live")
    assert code == 2 and "'nope'" in err and "'p1'" in err


def test_reconcile_without_live_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    journal = tmp_path / "exits.journal"
    cli_run(capsys, "exit", "--token", "tok", "--shares", "10", "--limit-price", "0.55", "--journal", str(journal),
            "--key", "K", "--log-level", "CRITICAL")
    code, _, err = cli_run(capsys, "reconcile", "--journal", str(journal))
    assert code == 2 and "--live" in err


# -- check ---------------------------------------------------------------------------------------------

def test_check_live_prints_a_checklist_and_sends_no_order(
        capsys: pytest.CaptureFixture[str], clob: FakeClob, monkeypatch: pytest.MonkeyPatch) -> None:
    live_env(clob, monkeypatch)
    code, out, _ = cli_run(capsys, "check", "--live", "--token", TOKEN)
    assert code == 0, out
    for line in ("settings", "host", "clock", "API credentials", "tick 0.01, minimum size 5 shares",
                 "balance 7.5 shares, allowance set", "rate-limit tier",
                 "user channel", "off: fills and settlements are followed over REST only"):
        assert line in out, (line, out)
    # The fake serves the signer's tier since issue 12 (WIRE.md section 7a): read, not "unknown".
    assert re.search(r"^\[  ok   \] rate-limit tier .*standard$", out, re.MULTILINE), out
    assert clob.posted_orders == [] and clob.count("GET", "/time") == 1


def test_check_reads_every_position_of_a_journal(
        capsys: pytest.CaptureFixture[str], clob: FakeClob, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    journal = tmp_path / "exits.journal"
    journal_with_unknown(journal, clob)
    live_env(clob, monkeypatch)
    code, out, _ = cli_run(capsys, "check", "--live", "--journal", str(journal))
    assert code == 0 and "token 713210...2563" in out and "market 713210...2563" in out


def test_check_fails_on_clock_skew_and_bad_credentials(
        capsys: pytest.CaptureFixture[str], clob: FakeClob, monkeypatch: pytest.MonkeyPatch) -> None:
    live_env(clob, monkeypatch)
    from exitguard.cli import check
    args = cli_args("check", "--live")
    out = io.StringIO()
    assert check.run(args, out=out, err=io.StringIO(), now=lambda: time.time() + 120) == 1
    # The skew printed is 120 s plus the exchange's whole-second rounding and the round trip (slow under load).
    skew = re.search(r"\[ FAIL  \] clock +local clock \+(\d+\.\d)s", out.getvalue())
    assert skew is not None and 120 <= float(skew.group(1)) < 130, out.getvalue()
    monkeypatch.setenv("POLYMARKET_API_SECRET", "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI=")
    code, out_text, _ = cli_run(capsys, "check", "--live")
    assert code == 1 and "[ FAIL  ] API credentials" in out_text and "401" in out_text


def test_check_names_the_host_it_cannot_reach(capsys: pytest.CaptureFixture[str], clob: FakeClob,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    live_env(clob, monkeypatch)
    monkeypatch.setenv("POLYMARKET_HOST", "http://127.0.0.1:9")
    code, out, _ = cli_run(capsys, "check", "--live")
    assert code == 1 and "cannot reach http://127.0.0.1:9: connection refused" in out


def cli_args(*argv: str):  # type: ignore[no-untyped-def]
    import argparse

    from exitguard.cli import check
    parser = argparse.ArgumentParser()
    check.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(list(argv))


# -- network errors ----------------------------------------------------------------------------------

def test_network_error_names_the_host_and_the_cause(capsys: pytest.CaptureFixture[str], clob: FakeClob,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    live_env(clob, monkeypatch)
    monkeypatch.setenv("POLYMARKET_HOST", "http://127.0.0.1:9")
    code, out, _ = cli_run(capsys, "exit", "--token", TOKEN, "--shares", "10", "--limit-price", "0.55", "--live",
                           "--yes", "--no-journal", "--log-level", "CRITICAL")
    assert code == 1 and "VERIFY_FAILED" in out
    assert "cannot reach http://127.0.0.1:9: connection refused" in out


# -- status and history --------------------------------------------------------------------------------

def test_status_shows_the_fill_price_and_order_id_and_history_shares_and_wall_times(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    journal = tmp_path / "exits.journal"
    cli_run(capsys, "exit", "--token", "tok", "--shares", "10", "--limit-price", "0.55", "--journal", str(journal),
            "--key", "K", "--log-level", "CRITICAL")
    code, out, _ = cli_run(capsys, "status", "--journal", str(journal))
    header, row = [line.split() for line in out.splitlines()[2:4]]
    assert code == 0 and "price" in header and row[header.index("price")] == "0.55"
    assert "paper-1" in row
    code, out, _ = cli_run(capsys, "history", "K", "--journal", str(journal))
    assert code == 0
    assert "expected=10 " in out and "10000000" not in out
    assert "Z  SELLING   ->  CLOSED" in out and "verified_at" not in out  # UTC wall-clock times


# -- Ctrl-C ------------------------------------------------------------------------------------------------

@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process is POSIX")
def test_ctrl_c_mid_sell_prints_unknown_with_the_order_id_and_exits_130(tmp_path: Path) -> None:
    journal = tmp_path / "exits.journal"
    proc = subprocess.Popen(
        [sys.executable, "-m", "exitguard.cli.main", "exit", "--token", "tok", "--shares", "10",
         "--limit-price", "0.55", "--paper-latency", "0.6", "--journal", str(journal), "--key", "K",
         "--log-level", "CRITICAL"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(60, proc.kill)  # bounds a hung child; not a timing assertion
    watchdog.start()
    try:
        order = _wait_for_order(journal, proc)
        proc.send_signal(signal.SIGINT)
        signalled = time.monotonic()
        out, err = proc.communicate()
        took = time.monotonic() - signalled
    finally:
        watchdog.cancel()
    lines = [line for line in err.splitlines() if line.strip() and "|" not in line]
    assert proc.returncode == 130, err
    assert lines == [f"exitguard exit: interrupted: position K is SELLING, outcome UNKNOWN: the sell may have "
                     f"executed (order {order}); nothing will be resent: a paper exchange's orders end with its "
                     "process: nothing to look up"], err
    assert "Traceback" not in err
    assert took < 5, took  # it used to hang about 5 s; the sell's own latency is 0.6 s
    with _closing(journal) as opened:
        [position] = opened.positions()
    assert str(position.state) == "SELLING" and position.unresolved and position.order_id == order


def _wait_for_order(journal: Path, proc: subprocess.Popen[str]) -> str:
    """The order id once the journal shows the sell in flight (read-only reads beside the running engine)."""
    while proc.poll() is None:
        if journal.exists():
            try:
                with _closing(journal) as opened:
                    found = [p for p in opened.positions() if p.order_id]
            except Exception:  # noqa: BLE001 - the file is being created
                found = []
            if found:
                return found[0].order_id or ""
        time.sleep(0.01)
    raise AssertionError(f"the exit ended before its sell was in flight: {proc.communicate()}")
