"""The Batch API backend: the same requests as the online engine, at half the price, within 24 h.

``backend.BatchRun`` takes a job's requests (packed as online) and a ``lines.BatchLines`` that
ties each request to the cache keys it answers; it writes them as JSONL files on disk (split at
the API's limits), uploads them, creates the batches, waits for them (submitting in waves when
the model's enqueued-token limit refuses one) and hands back one ``Outcome`` per line, read
line by line from the output and error files (``lines.read_line``: a malformed line is that
request's error). ``api.BatchApi`` makes the files/batches calls. Each step is committed to
the record in the cache's SQLite (``dfbatch.cache.batch_record``) before the next one, so a
rerun after a kill picks the batches up and never submits a row twice.

May import: the cache and the engine; never pandas nor a front end or a job. In: ``Request``
values and a ``BatchLines`` from a job; out: ``Outcome`` values and the run's figures.
"""
