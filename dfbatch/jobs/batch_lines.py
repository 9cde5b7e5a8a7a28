"""How each job's requests map to cache keys, for the Batch backend (``dfbatch.batch.lines``).

- :class:`KeyedLines`: one request per key, its id the hex request key (chat, completions,
  ``dfbatch run``'s lines): a line answers that key's rows.
- :class:`EmbedLines`: a request packs many inputs, one embedding key each: a line answers the
  inputs it carried, and a rerun that packs differently still finds them by key. The
  response's items are narrowed to the inputs this job still needs and renumbered, so
  :meth:`EmbedJob.receive` reads it as the answer to a request of just those inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..engine.answers import check_embeddings
from ..engine.types import ErrorInfo, Outcome, Request
from .embed import EmbedJob

#: A row (or a ``dfbatch run --batch`` line) that no batch answered and none refused: a batch
#: that never said a word of it, or that another process read and closed past the record's
#: keeping. Never left blank.
NOT_ANSWERED = ErrorInfo(
    None,
    "batch_not_answered",
    "no batch gave an answer or an error for this request; run the same call or command "
    "again to submit it",
)


class KeyedLines:
    """Requests whose ``id`` is their hex cache key; ``find(key)`` gives back, for a key of
    this job still unanswered, the request to put an answer on (None otherwise). An answer
    for a key that is not this job's (another call's batch, picked up on the way) goes to the
    cache, so that call finds it there and never submits it again."""

    scope = "requests"

    def __init__(
        self, find: Callable[[str], Request | None], *, cache: Any = None, model: str | None = None
    ) -> None:
        self._find = find
        self._cache = cache
        self._model = model

    def keys(self, request: Request) -> list[bytes]:
        return [bytes.fromhex(request.id)]

    def without(self, request: Request, drop: set[int]) -> Request | None:
        return None if 0 in drop else request

    def outcome(
        self, keys: list[bytes], response: Any = None, error: ErrorInfo | None = None
    ) -> Outcome | None:
        if len(keys) != 1:
            return None
        request = self._find(keys[0].hex())
        if request is None:
            if error is None and self._cache is not None and isinstance(response, dict):
                self._cache.put(keys[0].hex(), response, model=self._model)
                self._cache.maybe_flush()  # a batch's 50,000 answers never wait in memory
            return None
        return Outcome(request, response=response, error=error, attempts=1)


class EmbedLines:
    """The packed requests of an :class:`EmbedJob` whose unique texts have ``keys``."""

    scope = "inputs"

    def __init__(
        self,
        job: EmbedJob,
        keys: Sequence[bytes],
        encoding_format: str | None,
        *,
        cache: Any = None,
    ) -> None:
        self.job = job
        self._keys = keys
        self._format = encoding_format
        self._cache = cache
        self._unit_of: dict[bytes, int] | None = None

    def keys(self, request: Request) -> list[bytes]:
        return [self._keys[u] for u in request.meta]

    def without(self, request: Request, drop: set[int]) -> Request | None:
        kept = [u for i, u in enumerate(request.meta) if i not in drop]
        if not kept:
            return None
        tokens = sum(self.job.tokens[u] for u in kept)
        return self.job._request(request.id, kept, tokens, self._format)

    def outcome(
        self, keys: list[bytes], response: Any = None, error: ErrorInfo | None = None
    ) -> Outcome | None:
        if self._unit_of is None:
            self._unit_of = {k: u for u, k in enumerate(self._keys)}
        job = self.job
        wanted: dict[int, int] = {}  # position in the line -> unit
        foreign: list[int] = []  # positions of keys that are not this job's
        for i, key in enumerate(keys):
            u = self._unit_of.get(key)
            if u is None:
                foreign.append(i)
            elif job.rows_of[u] and not job.have[u]:  # type: ignore[index]
                wanted[i] = u
        if foreign and error is None:
            self._keep(keys, foreign, response)
        if not wanted:
            return None
        units = list(wanted.values())
        # the request these inputs would have made alone: its body is what the answer is
        # checked against (dimensions asked, the model's own length)
        request = job._request(None, units, 0, None)  # type: ignore[arg-type]
        if error is not None:
            return Outcome(request, error=error, attempts=1)
        return Outcome(request, response=_narrow(response, wanted, len(keys)), attempts=1)

    def _keep(self, keys: list[bytes], positions: list[int], response: Any) -> None:
        """Cache the vectors of another call's inputs, so that call never pays for them again."""
        if self._cache is None:
            return
        job = self.job
        sent: dict[str, Any] = {"model": job.model, "input": keys}
        if job.dimensions is not None:  # the other call's keys name the same model and size
            sent["dimensions"] = job.dimensions
        try:  # checked as the engine checks an answer: finite, of the length asked
            found, matrix = check_embeddings(sent, response)
        except ValueError:
            return  # unusable: that call's rerun submits them again
        take = set(positions)
        rows = [j for j, i in enumerate(found) if i in take]
        if rows:
            self._cache.put_vectors(
                [keys[found[j]] for j in rows], matrix[rows], model=self.job.model
            )
            self._cache.maybe_flush()


def _narrow(response: Any, wanted: dict[int, int], n: int) -> Any:
    """The response with only the items of the ``wanted`` positions, renumbered in their
    order; items the job cannot read (no index, out of range) stay, so it reports them."""
    data = response.get("data") if isinstance(response, dict) else None
    if not isinstance(data, list):
        return response
    new_index = {i: j for j, i in enumerate(wanted)}
    items = []
    for pos, item in enumerate(data):
        index = item.get("index", pos) if isinstance(item, dict) else None
        if not isinstance(index, int) or not 0 <= index < n:
            items.append(item)
        elif index in new_index:
            items.append({**item, "index": new_index[index]})
    return {**response, "data": items}
