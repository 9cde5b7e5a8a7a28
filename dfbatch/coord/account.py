"""The name a shared budget goes by: a hash of the server's address and the API key.

Senders share a budget exactly when they send to the same server with the same key. The key
itself never leaves the process: coordinators see only this hash.
"""

from __future__ import annotations

import hashlib

from ..engine.config import ApiConfig


def account_id(api: ApiConfig) -> str:
    """A stable, non-reversible name for (base URL, API key).

    >>> from dfbatch.engine.config import ApiConfig
    >>> a = ApiConfig.resolve(base_url="http://x/v1", api_key="sk-1")
    >>> b = ApiConfig.resolve(base_url="http://x/v1", api_key="sk-2")
    >>> account_id(a) != account_id(b), "sk-1" in account_id(a), len(account_id(a))
    (True, False, 32)
    """
    key = api.api_key.reveal() if api.api_key else ""
    digest = hashlib.sha256(f"{api.base_url}\0{key}".encode()).hexdigest()
    return digest[:32]
