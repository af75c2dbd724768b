"""The MI bearer token."""

from __future__ import annotations

import hmac
from pathlib import Path


def load_token(path: str | None) -> str | None:
    if path is None:
        return None
    token = Path(path).read_text().strip()
    if not token:
        raise ValueError(f"mi.token_file {path} is empty")
    return token


def authorized(header: str | None, token: str | None) -> bool:
    if token is None:
        return True
    if not header:
        return False
    scheme, _, value = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode())
