"""The handle ``wait=False`` returns: a Batch API job that runs while the notebook goes on.

    >>> job = df.llm.embed("text", backend="batch", wait=False)   # doctest: +SKIP
    >>> job.status()                                              # doctest: +SKIP
    'in_progress'
    >>> out = job.result()        # waits, downloads, the same frame as wait=True  # doctest: +SKIP

``result()`` is the same call again with ``wait=True``: it finds the job's batches in the
record, waits for them and returns the frame (nothing is submitted twice), so it works as well
after a kernel restart as the rerun of the cell would.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from ..batch.api import BatchApi
from ..engine.config import ApiConfig
from .sync import run_sync

ENDED = ("completed", "expired", "cancelled", "failed")


class BatchJob:
    """Submitted batches of one call: ``status()``, ``progress()``, ``result()``, ``cancel()``."""

    def __init__(
        self,
        api: ApiConfig,
        batch_ids: list[str],
        rerun: Callable[[], Awaitable[Any]],
    ) -> None:
        self.api = api
        self.batch_ids = list(batch_ids)
        self._rerun = rerun
        self._last: list[dict[str, Any]] = []

    def __repr__(self) -> str:
        ids = ", ".join(self.batch_ids[:3]) + (", ..." if len(self.batch_ids) > 3 else "")
        return f"<BatchJob {len(self.batch_ids)} batch(es) [{ids}]>"

    async def _fetch(self) -> list[dict[str, Any]]:
        async with BatchApi(self.api) as client:
            self._last = [await client.retrieve(b) for b in self.batch_ids]
        return self._last

    def batches(self) -> list[dict[str, Any]]:
        """The API's objects of the job's batches, as they are now."""
        return run_sync(self._fetch)

    def status(self) -> str:
        """``in_progress`` while a batch runs (validating, finalizing ... included), else
        ``completed``, or the last batch's end when one did not complete (expired ...)."""
        states = [str(b.get("status")) for b in self.batches()]
        if any(s not in ENDED for s in states):
            return "in_progress"
        bad = [s for s in states if s != "completed"]
        return bad[-1] if bad else "completed"

    def progress(self) -> dict[str, int]:
        """The batches' ``request_counts`` added up: completed, failed, total."""
        out = {"completed": 0, "failed": 0, "total": 0}
        for batch in self.batches():
            counts = batch.get("request_counts")
            if isinstance(counts, dict):
                for key in out:
                    value = counts.get(key)
                    out[key] += value if isinstance(value, int) else 0
        return out

    def done(self) -> bool:
        return self.status() != "in_progress"

    async def aresult(self) -> Any:
        """Wait for the batches, download their answers and return the frame."""
        return await self._rerun()

    def result(self) -> Any:
        """Wait for the batches, download their answers and return the frame (the same as the
        call with ``wait=True``)."""
        return run_sync(self._rerun)

    def cancel(self) -> None:
        """Cancel the batches still running; answers they already have stay downloadable
        (``result()`` fetches them; the rows they did not answer are their errors)."""

        async def go() -> None:
            async with BatchApi(self.api) as client:
                for batch_id in self.batch_ids:
                    batch = await client.retrieve(batch_id)
                    if batch.get("status") not in (*ENDED, "cancelling"):
                        await client.cancel(batch_id)

        run_sync(go)


async def submit_or_run(call: Callable[[Any], Awaitable[Any]], options: Any) -> Any:
    """``call(options)``; with ``backend="batch", wait=False`` a :class:`BatchJob` once the
    batches are submitted (or the result itself when nothing had to be submitted)."""
    if options.backend != "batch" or options.wait:
        return await call(options)
    from dataclasses import replace

    from ..batch.backend import BatchSubmitted

    try:
        return await call(options)
    except BatchSubmitted as submitted:
        waiting = replace(options, wait=True)
        return BatchJob(options.api, submitted.batch_ids, lambda: call(waiting))
