"""Request authentication, checked exactly the way py-clob-client-v2 builds it.

L2: HMAC-SHA256 over ``timestamp + METHOD + path + body`` with the urlsafe-base64 API secret, where
``path`` has no query string and ``body`` is the exact serialized JSON the client sent
(signing/hmac.py). L1: an EIP-712 ``ClobAuth`` signature by the wallet (signing/eip712.py).
The client's own functions build the expected values, so a drift in the client shows up here as a
401 instead of silently passing.
"""

from __future__ import annotations

import hmac
from email.message import Message

from eth_account import Account
from eth_utils import keccak
from py_clob_client_v2.clob_types import ApiCreds
from py_clob_client_v2.signing.eip712 import MSG_TO_SIGN, get_clob_auth_domain
from py_clob_client_v2.signing.hmac import build_hmac_signature
from py_clob_client_v2.signing.model import ClobAuth


def l2_ok(headers: Message, method: str, path: str, body_text: str | None,
          creds: ApiCreds, address: str) -> bool:
    """True when the five POLY_* headers authenticate this exact request for `creds`/`address`."""
    try:
        api_key = headers.get("POLY_API_KEY")
        passphrase = headers.get("POLY_PASSPHRASE")
        poly_address = headers.get("POLY_ADDRESS") or ""
        timestamp = headers.get("POLY_TIMESTAMP")
        signature = headers.get("POLY_SIGNATURE") or ""
        if api_key != creds.api_key or passphrase != creds.api_passphrase or not timestamp:
            return False
        if poly_address.lower() != address.lower():
            return False
        # body_text or None: an empty body is not signed, exactly as `if body:` in the client.
        expected = build_hmac_signature(creds.api_secret, timestamp, method, path, body_text or None)
        return hmac.compare_digest(expected, signature)
    except Exception:  # malformed secret or header: not authenticated, never a 500
        return False


def l1_signer(headers: Message, chain_id: int) -> str | None:
    """The address that signed the ClobAuth message in the headers, when it matches POLY_ADDRESS."""
    try:
        address = headers["POLY_ADDRESS"]
        timestamp = headers["POLY_TIMESTAMP"]
        nonce = int(headers.get("POLY_NONCE") or 0)
        signature = bytes.fromhex(headers["POLY_SIGNATURE"].removeprefix("0x"))
        message = ClobAuth(address=address, timestamp=timestamp, nonce=nonce, message=MSG_TO_SIGN)
        digest = keccak(message.signable_bytes(get_clob_auth_domain(chain_id)))
        signer = Account._recover_hash(digest, signature=signature)
    except Exception:
        return None
    return signer if signer.lower() == address.lower() else None
