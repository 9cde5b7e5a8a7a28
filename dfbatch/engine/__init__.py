"""The engine: requests in, outcomes out.

It paces requests under the account's limits (``limiter``), sends them through a swappable
transport (``transport``, ``http_client``), classifies each answer and retries what can be
retried (``retry``), and hands back one ``Outcome`` per ``Request`` (``core.Engine``). Token
estimates (``tokens``), the server's address and key (``config``), every number (``constants``)
and the exception tree (``errors``) live here too.

May import: the standard library and its own modules only; never pandas, the cache or a front
end. In: ``Request`` values from a job; out: ``Outcome`` values and ``RunStats``.
"""
