"""The backstop behind the log checks (wal.py): after an unclean stop, the journal is audited against the exchange.

wal.py refuses a start whose write-ahead log is missing, empty or shorter than it had grown; it cannot see a log
cut within its newest part, which reads as a shorter, valid log. What such a cut loses is the newest writes, and the
dangerous ones are sales: a journal that forgot a sale holds the position as if it were still to sell, and the
exchange's balance cache can still show the shares just sold.

So, after an unclean stop and before any exit may start, the engine asks the exchange for our own sell orders that
traded since the newest write that survived (`Journal.audit_since`, widened by CLOCK_SKEW) and looks for each in
the journal (`Journal.order_ids`: every order id is journaled before its post). Any it does not know refuses the
start with `UnjournaledSales` naming them. A query that fails, or answers with something that is not a list of
order ids, refuses it too: a failed query is not an empty one, and the start cannot tell an outage from a loss.
The way out is the operator's, as for a lost log: check the positions against the exchange, then
`python -m exitguard.journal.wal --accept-lost-log JOURNAL`.

The audit stays pending in the journal (journal_state.audit_since) until one passes: a start refused for any
reason, before or by the audit, audits again from the same point the next time.

The exchange answers through the port's optional `our_sells_since` (exchange/port.py). An exchange without it
cannot be audited: the start goes on with a WARNING (`journal_audit_skipped`, naming the window to check by hand).

Its limits: a trade the exchange does not list yet (trade history may lag a match) is not seen; and any sale from
the wallet that no journaled engine made (another program, an engine without a journal) is taken for a lost one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from datetime import UTC, datetime, timedelta

import anyio

from exitguard.errors import JournalError, UnjournaledSales
from exitguard.journal.store import EPOCH, Journal
from exitguard.telemetry.logs import emit

CLOCK_SKEW = timedelta(seconds=300)
"""Subtracted from the newest surviving write's time: our clock (which wrote it) and the exchange's match times may
disagree, and a window too narrow would miss the very sale it looks for."""

AUDIT_TIMEOUT = 60.0
"""Seconds the whole query may take (every page of it); past that, it failed."""

SHOWN_ORDERS = 10
"""Order ids named in the refusal's message (all of them are on the error's `orders`)."""


def window_start(audit_since: str) -> datetime:
    """Where the exchange's history is read from: the journaled time less CLOCK_SKEW. A time the journal cannot
    read reads the whole history (wider is safe, narrower is not); one without a zone is taken as UTC."""
    try:
        at = datetime.fromisoformat(audit_since)
    except ValueError:
        at = datetime.fromisoformat(EPOCH)
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return max(at - CLOCK_SKEW, datetime.fromisoformat(EPOCH))


async def audit_unclean_start(exchange: object, journal: Journal | None) -> None:
    """Refuse the start when the exchange shows a sale of ours that the journal does not know (see the module)."""
    if journal is None or journal.audit_since is None:
        return  # no journal, or the last engine closed it cleanly (or an audit since then passed)
    since = window_start(journal.audit_since)
    fields = {"journal": str(journal.path), "since": since.isoformat()}
    query: Callable[[datetime], Awaitable[object]] | None = getattr(exchange, "our_sells_since", None)
    if query is None:
        emit("journal_audit_skipped", **fields, exchange=type(exchange).__name__)
        journal.audit_passed()  # said once, at the start it concerns; nothing later could do it better
        return
    fix = ("check every position against the exchange, correct or track them again, then run "
           f"`python -m exitguard.journal.wal --accept-lost-log {journal.path}` to start from what the journal holds")
    try:
        with anyio.fail_after(AUDIT_TIMEOUT):
            answer = await query(since)
        sold = _order_ids(answer)
    except Exception as err:  # noqa: BLE001 - whatever stopped the query, the exchange did not answer it
        cause = str(err) or (f"no answer within {AUDIT_TIMEOUT:g}s" if isinstance(err, TimeoutError) else "")
        why = (f"the last engine did not close it cleanly, and the audit of our sales since {since.isoformat()} "
               f"against the exchange failed ({type(err).__name__}: {cause or 'no detail'}); a failed query is not an "
               f"empty one. Nothing was sent: start again when the exchange answers, or {fix}")
        emit("journal_audit_refused", **fields, orders=[], error=why)
        raise JournalError(journal.path, why) from None
    known = {order_id.lower() for order_id in journal.order_ids()}
    unknown = sorted({order_id for order_id in sold if order_id.lower() not in known})
    if unknown:
        shown = ", ".join(unknown[:SHOWN_ORDERS]) + (f" and {len(unknown) - SHOWN_ORDERS} more"
                                                      if len(unknown) > SHOWN_ORDERS else "")
        why = (f"the last engine did not close it cleanly, and the exchange shows {len(unknown)} sale(s) of ours since "
               f"{since.isoformat()} whose orders the journal does not know: {shown}. It lost writes (a write-ahead "
               "log cut short or replaced), or something else sold from this wallet; starting could sell again what "
               f"is already sold. Nothing was sent: {fix}")
        emit("journal_audit_refused", **fields, orders=unknown, error=why)
        raise UnjournaledSales(journal.path, tuple(unknown), why)
    journal.audit_passed()
    emit("journal_audit_passed", **fields, sales=len(sold))


def _order_ids(answer: object) -> list[str]:
    """The port's answer, checked: a list (or other collection) of order ids as text, else a failed query."""
    if isinstance(answer, (str, bytes)) or not isinstance(answer, Collection) \
            or not all(isinstance(order_id, str) and order_id for order_id in answer):
        raise TypeError(f"our_sells_since answered {str(answer)[:200]!r}, not a list of order ids")
    return list(answer)
