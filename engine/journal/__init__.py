"""The durable journal: SQLite write-ahead log of every transition, the current state, one engine per file."""

from exitguard.errors import JournalError
from exitguard.journal.schema import SCHEMA_VERSION
from exitguard.journal.store import Journal, JournaledPosition, JournaledTransition

__all__ = ["SCHEMA_VERSION", "Journal", "JournalError", "JournaledPosition", "JournaledTransition"]
