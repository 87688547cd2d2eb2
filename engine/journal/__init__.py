"""The durable journal: SQLite write-ahead log of every transition, the current state, one engine per file."""

from engine.errors import JournalError
from engine.journal.schema import SCHEMA_VERSION
from engine.journal.store import Journal, JournaledPosition, JournaledTransition

__all__ = ["SCHEMA_VERSION", "Journal", "JournalError", "JournaledPosition", "JournaledTransition"]
