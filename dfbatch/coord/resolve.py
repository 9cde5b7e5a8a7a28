"""The ``limiter=`` option: which coordinator a run's budget is shared through."""

from __future__ import annotations

from typing import Any

from ..engine.config import ApiConfig
from ..engine.errors import ConfigurationError
from ..engine.lease import SharedBudget
from .account import account_id
from .leaser import LeasedBudget

#: What ``limiter=`` accepts, for messages and help.
LIMITER_CHOICES = '"local" (threads of this process), "redis://host:port/db", or a coordinator'


def shared_budget(limiter: Any, api: ApiConfig) -> SharedBudget | None:
    """``None`` (this run paces alone), ``"local"``, ``"redis://..."``, a coordinator (an object
    with ``async lease(ask)``) or a ready ``SharedBudget`` (an object with ``open``)."""
    if limiter is None or limiter is False:
        return None
    if isinstance(limiter, str):
        if limiter == "local":
            from .local import LocalCoordinator

            return LeasedBudget(LocalCoordinator(account_id(api)), name="local")
        if limiter.startswith(("redis://", "rediss://", "unix://")):
            from .redis import RedisCoordinator

            shown = limiter.split("@")[-1]  # never show a password
            return LeasedBudget(RedisCoordinator(limiter, account_id(api)), name=shown)
        raise ConfigurationError(f"limiter={limiter!r} is not one of {LIMITER_CHOICES}")
    if hasattr(limiter, "open"):
        return limiter  # type: ignore[no-any-return]
    if hasattr(limiter, "lease"):
        return LeasedBudget(limiter)
    raise ConfigurationError(f"limiter={limiter!r} is not one of {LIMITER_CHOICES}")
