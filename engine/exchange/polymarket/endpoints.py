"""The CLOB requests the adapter makes, exactly as py-clob-client-v2 1.2.1 makes them (client.py,
http_helpers/helpers.py): the same paths, query parameters in the same order, and auth headers from the client's
own public builders (`create_level_1_headers`, `create_level_2_headers`). Only the sending is the adapter's
(transport.py). The L2 signature covers the method, the path without its query, the timestamp and the exact body
sent; a GET has no body.
"""

from __future__ import annotations

import json
from typing import Any

from py_clob_client_v2.client import ClobClient
from py_clob_client_v2.clob_types import OrderType, RequestArgs
from py_clob_client_v2.constants import INITIAL_CURSOR
from py_clob_client_v2.endpoints import (
    DERIVE_API_KEY,
    GET_BALANCE_ALLOWANCE,
    GET_ORDER,
    GET_ORDER_BOOK,
    POST_ORDER,
    TRADES,
    UPDATE_BALANCE_ALLOWANCE,
    VERSION,
)
from py_clob_client_v2.headers.headers import create_level_1_headers, create_level_2_headers
from py_clob_client_v2.order_utils.model.order_data_v2 import order_to_json_v2

from exitguard.errors import TransientError
from exitguard.exchange.polymarket.positions import ledger_of
from exitguard.exchange.polymarket.secrets import MaskedBody, MaskedCreds, MaskedHeaders, Secret

__all__ = ["DERIVE_API_KEY", "GET_BALANCE_ALLOWANCE", "GET_ORDER_BOOK", "POST_ORDER", "TRADES",
           "UPDATE_BALANCE_ALLOWANCE", "VERSION", "balance_params", "derived_creds", "l1_headers", "l2_headers",
           "order_body", "order_path", "trade_params", "version_of"]


def l1_headers(client: ClobClient) -> MaskedHeaders:
    """The headers of API-key derivation: the signer's EIP-712 ClobAuth signature (nonce 0, our clock)."""
    return MaskedHeaders(create_level_1_headers(client.signer))


def l2_headers(client: ClobClient, method: str, path: str, body: str | None = None) -> MaskedHeaders:
    """The API-key headers of one request, the HMAC over `body` exactly as it is sent."""
    return MaskedHeaders(create_level_2_headers(client.signer, client.creds, RequestArgs(
        method=method, request_path=path, serialized_body=body)))


def balance_params(client: ClobClient, token_id: str) -> dict[str, str]:
    """GET /balance-allowance and /balance-allowance/update of a token: the ledger follows from the id
    (positions.py), the signature type from the client's builder (the client always sends it)."""
    return {"signature_type": str(int(client.builder.signature_type)), "asset_type": str(ledger_of(token_id)),
            "token_id": token_id}


def order_path(order_id: str) -> str:
    return f"{GET_ORDER}{order_id}"


def trade_params(*, asset_id: str | None = None, after: int | None = None, trade_id: str | None = None,
                 cursor: str = INITIAL_CURSOR) -> dict[str, str]:
    """GET /data/trades filters, in the client's order (market, asset_id, after, before, maker_address, id)."""
    params = {"asset_id": asset_id, "after": None if after is None else str(after), "id": trade_id}
    return {**{k: v for k, v in params.items() if v}, "next_cursor": cursor}


def order_body(client: ClobClient, order: Any) -> MaskedBody:
    """POST /order of a signed order as FOK: the bytes `post_order` sends (compact JSON, not ASCII-escaped).
    Masked: the body names our API key as the order's owner."""
    payload = order_to_json_v2(order, client.creds.api_key, OrderType.FOK, False, False)
    return MaskedBody(json.dumps(payload, separators=(",", ":"), ensure_ascii=False))


def derived_creds(body: object) -> MaskedCreds:
    """The API credentials of a GET /auth/derive-api-key answer (held as Secrets at once). Raises TransientError
    for anything else, never quoting the body: a partial answer may still hold a secret."""
    fields = ("apiKey", "secret", "passphrase")
    if not isinstance(body, dict) or not all(isinstance(body.get(f), str) and body[f] for f in fields):
        raise TransientError("API key derivation: answer without the key, secret and passphrase")
    return MaskedCreds(*(Secret(body[f]) for f in fields))


def version_of(body: object, current: int) -> int:
    """The order version of a GET /version answer. As the client's `get_version`, an answer without a readable
    version is taken for the current one: a wrong guess costs one refused order (`order_version_mismatch`),
    which clears it."""
    found = body.get("version") if isinstance(body, dict) else None
    return found if isinstance(found, int) and not isinstance(found, bool) else current
