"""The engine: requests in, outcomes out.

It paces requests under the account's limits (``limiter``, with requests waiting their turn at
the ``gate``; ``lease``/``share`` when several senders share one budget), sends them through a
swappable transport (``transport``, ``http_client``), checks each answer (``answers``),
classifies it and retries what can be retried (``retry``), keeps the spend under a budget
(``budget``, ``prices``) and a per-second ``timeline``, and hands back one ``Outcome`` per
``Request`` (``core.Engine``). Token estimates (``tokens``), the server's address and key
(``config``), option checks (``checks``), every number (``constants``) and the exception tree
(``errors``) live here too.

May import: the standard library, numpy and its own modules only; never pandas, the cache or a
front end. In: ``Request`` values from a job; out: ``Outcome`` values and ``RunStats``.
"""
