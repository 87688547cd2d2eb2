"""One engine per journal file, whatever path reaches it, and one engine per wallet on a host (issue 11 B.7)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from exitguard import ExitEngine, ManualClock, Position, WalletInUse
from exitguard.errors import JournalError
from exitguard.exchange.paper import PaperExchange
from exitguard.journal import Journal
from exitguard.wallet_lock import wallet_of

pytestmark = pytest.mark.anyio


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "exits.journal"


def engine_on(exchange: PaperExchange, journal: Path | str, clock: ManualClock) -> ExitEngine:
    return ExitEngine(exchange, journal=journal, clock=clock, settlement_poll_interval=None)


def holder(script: str) -> Iterator[subprocess.Popen[str]]:
    """A Python process that runs `script`, prints "ready" and waits for its stdin to close."""
    code = textwrap.dedent(script) + "\nprint('ready', flush=True)\nsys.stdin.read()\n"
    proc = subprocess.Popen([sys.executable, "-c", "import sys\n" + code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready", proc.stderr.read()  # type: ignore[union-attr]
        yield proc
    finally:
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        proc.wait(timeout=30)


# -- the journal lock is on the file ---------------------------------------------------------------

async def test_a_symlink_to_a_held_journal_is_refused(exchange: PaperExchange, clock: ManualClock, path: Path) -> None:
    link = path.with_name("link.journal")
    async with engine_on(exchange, path, clock):
        link.symlink_to(path)
        with pytest.raises(JournalError, match="in use by another engine") as refused:
            Journal.open(link)
    assert refused.value.path == str(link)


async def test_a_hard_link_to_a_held_journal_is_refused(exchange: PaperExchange, clock: ManualClock,
                                                       path: Path) -> None:
    async with engine_on(exchange, path, clock):
        other = path.with_name("hard.journal")
        os.link(path, other)
        with pytest.raises(JournalError, match="in use by another engine"):
            async with engine_on(PaperExchange(clock=clock), other, clock):
                pass


async def test_a_relative_path_to_a_held_journal_is_refused(exchange: PaperExchange, clock: ManualClock, path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    (path.parent / "sub").mkdir()
    async with engine_on(exchange, path, clock):
        monkeypatch.chdir(path.parent / "sub")
        with pytest.raises(JournalError, match="in use by another engine"):
            Journal.open("../sub/../exits.journal")


async def test_no_lock_file_exists_whose_deletion_would_let_a_second_engine_in(
        exchange: PaperExchange, clock: ManualClock, path: Path) -> None:
    async with engine_on(exchange, path, clock):
        for side in path.parent.iterdir():
            if side != path and not side.name.endswith(("-wal", "-shm")):
                side.unlink()  # whatever else lies beside the journal, as a careless clean-up would
        assert sorted(p.name for p in path.parent.iterdir() if not p.name.endswith(("-wal", "-shm"))) == [path.name]
        with pytest.raises(JournalError, match="in use by another engine"):
            Journal.open(path)
    Journal.open(path).close()  # released when the engine stopped


def test_a_holder_in_another_process_reached_by_a_symlink_is_named_by_its_pid(path: Path) -> None:
    for proc in holder(f"""
        from exitguard.journal import Journal
        journal = Journal.open({str(path)!r})
    """):
        link = path.with_name("link.journal")
        link.symlink_to(path)
        with pytest.raises(JournalError, match=f"in use by another engine \\(pid {proc.pid}\\)"):
            Journal.open(link)
    Journal.open(path).close()


# -- one engine per wallet -------------------------------------------------------------------------

async def test_two_engines_on_one_wallet_with_different_journals_are_refused(clock: ManualClock,
                                                                            tmp_path: Path) -> None:
    first, second = PaperExchange(clock=clock, wallet="0xABC1"), PaperExchange(clock=clock, wallet="0xabc1")
    async with engine_on(first, tmp_path / "a.journal", clock):
        with pytest.raises(WalletInUse, match=f"wallet 0xabc1: in use by another engine on this host "
                                              f"\\(pid {os.getpid()}\\)"):
            async with engine_on(second, tmp_path / "b.journal", clock):
                pass
        with pytest.raises(WalletInUse):  # without a journal too: two engines would sell the same shares
            async with ExitEngine(second, settlement_poll_interval=None):
                pass
    async with engine_on(second, tmp_path / "b.journal", clock) as engine:  # released with the first engine
        engine.track(Position(key="p1", token_id="tok", shares=Decimal("1")))


def test_a_wallet_held_by_another_process_is_refused_naming_its_pid(clock: ManualClock) -> None:
    for proc in holder("""
        from exitguard.wallet_lock import WalletLock
        lock = WalletLock.acquire("0xfeed")
    """):
        with pytest.raises(WalletInUse, match=f"pid {proc.pid}"):
            import anyio

            async def start() -> None:
                async with ExitEngine(PaperExchange(clock=clock, wallet="0xFEED"), settlement_poll_interval=None):
                    pass

            anyio.run(start)


async def test_paper_exchanges_are_separate_wallets_unless_named(clock: ManualClock, tmp_path: Path) -> None:
    async with engine_on(PaperExchange(clock=clock), tmp_path / "a.journal", clock), \
            engine_on(PaperExchange(clock=clock), tmp_path / "b.journal", clock):
        pass
    assert wallet_of(PaperExchange(wallet="Named")) == "named"


def test_an_exchange_without_a_wallet_takes_no_wallet_lock_and_a_bad_one_is_refused() -> None:
    class Old:  # an adapter written before the port's optional `wallet`
        pass

    class Bad:
        wallet = 42

    assert wallet_of(Old()) is None
    with pytest.raises(ValueError, match="exchange.wallet"):
        wallet_of(Bad())


def test_the_polymarket_wallet_is_the_funder_else_the_signer() -> None:
    from fakeclob import FakeClob

    from exitguard.polymarket import PolymarketExchange

    funder = "0x" + "ab" * 20
    with FakeClob() as clob:
        signer = PolymarketExchange(clob.client())
        assert signer.wallet == signer.client.signer.address().lower()
        proxied = PolymarketExchange(clob.client(signature_type=2, funder=funder.upper().replace("0X", "0x")))
        assert proxied.wallet == funder


# -- portability -----------------------------------------------------------------------------------

def test_exitguard_imports_without_fcntl_and_locking_then_says_why(path: Path) -> None:
    script = f"""
import sys
sys.modules["fcntl"] = None  # as on Windows
sys.modules["msvcrt"] = None
import exitguard
from exitguard.errors import JournalError
from exitguard.journal import Journal
try:
    Journal.open({str(path)!r})
except JournalError as err:
    print("refused:", err)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "refused:" in done.stdout and "neither fcntl nor msvcrt" in done.stdout


def test_on_windows_the_lock_is_one_byte_of_sqlites_lock_page(path: Path) -> None:
    script = f"""
import os, sys, types
sys.modules["fcntl"] = None  # as on Windows
import exitguard.journal.lock as lock
calls = []
fake = types.ModuleType("msvcrt")  # installed after the imports: the standard library would take it for Windows
fake.LK_NBLCK, fake.LK_UNLCK = 2, 0
fake.locking = lambda fd, mode, nbytes: calls.append((mode, os.lseek(fd, 0, os.SEEK_CUR), nbytes))
lock.msvcrt = fake
from exitguard.journal import Journal
Journal.open({str(path)!r}).close()
byte = lock.WINDOWS_LOCK_BYTE
print(calls == [(2, byte, 1), (0, byte, 1)], byte == 0x40000000 + 512)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True"]
