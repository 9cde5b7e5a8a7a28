"""The cache: the durable store of every answer paid for.

``store.ResponseCache`` is what the rest of the package sees: keys (``keys``: hashes of what
determines an answer, never the key or base URL) map to answers in SQLite (``db``), and
embeddings to float32 blocks appended to a file beside it (``vector_file``, ``vectors``).

May import: the engine's constants and errors. In: answers from a job as they arrive; out:
answers for the keys a job asks about, checked against their checksums.
"""
