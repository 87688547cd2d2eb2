"""One engine per wallet on a host: an OS lock keyed by the wallet's address, held for the engine's lifetime.

Two engines on one wallet (each with its own journal, or none) would each verify the same balance and sell
it: the journal lock cannot see them, because they hold different files. The exchange names the wallet it
trades (`wallet_of`, from the port's optional `wallet` attribute); the lock is a file named by a hash of
that name in a host-wide folder (`EXITGUARD_LOCK_DIR`, default `<temp dir>/exitguard-wallets`), locked
with the same primitive as the journal (journal/lock.py), so the kernel drops it when the holder dies.

Its limits: it sees engines on this host only (a journal shared over a network is refused anyway: SQLite's
log needs a local disk), and deleting the lock file while an engine holds it lets a second one in. The
holder's pid is written into the file for the refusal message.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from exitguard.errors import WalletInUse
from exitguard.journal.lock import try_lock, unlock
from exitguard.states import InvalidValue

__all__ = ["WalletLock", "holding_wallet", "lock_folder", "wallet_of"]

PID_BYTES = 32
LOCK_BYTE = 1 << 20
"""Where Windows locks the wallet's file (its locks are mandatory byte ranges): past the pid text."""


def wallet_of(exchange: object) -> str | None:
    """The wallet the exchange trades, as the port's optional `wallet` attribute names it; None: not named
    (an adapter from before the attribute), and no wallet lock is taken."""
    wallet = getattr(exchange, "wallet", None)
    if wallet is None:
        return None
    if not isinstance(wallet, str) or not wallet.strip():
        raise InvalidValue("exchange.wallet", wallet, "must be a non-empty string naming the wallet traded")
    return wallet.strip().lower()


def lock_folder() -> Path:
    return Path(os.environ.get("EXITGUARD_LOCK_DIR") or Path(tempfile.gettempdir()) / "exitguard-wallets")


class WalletLock:
    def __init__(self, wallet: str, fd: int) -> None:
        self.wallet = wallet
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, wallet: str) -> WalletLock:
        folder = lock_folder()
        path = folder / (hashlib.sha256(wallet.encode()).hexdigest()[:32] + ".lock")
        try:
            folder.mkdir(mode=0o1777, parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o644)
        except OSError as err:
            why = f"cannot hold the lock of wallet {wallet} there ({err.strerror}); set it to a writable folder"
            raise InvalidValue("EXITGUARD_LOCK_DIR", str(folder), why) from None
        try:
            if not try_lock(fd, byte=LOCK_BYTE, what=path):
                os.lseek(fd, 0, os.SEEK_SET)
                holder = os.read(fd, PID_BYTES).decode(errors="replace").strip("\x00 \n")
                raise WalletInUse(wallet, holder or "unknown")
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, str(os.getpid()).encode())
        return cls(wallet, fd)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            unlock(fd, byte=LOCK_BYTE)
            os.close(fd)


@contextmanager
def holding_wallet(exchange: object) -> Iterator[str | None]:
    """The wallet lock of the exchange's wallet for the block (none when the exchange names no wallet)."""
    wallet = wallet_of(exchange)
    lock = None if wallet is None else WalletLock.acquire(wallet)
    try:
        yield wallet
    finally:
        if lock is not None:
            lock.release()
