"""The command line: ``dfbatch run``, ``embed``, ``complete``, ``cache`` and ``batches``.

``main`` parses (``parser``, ``args``, ``args_frames``, ``help``), configures logging (only the
command line does) and maps results to exit statuses; ``commands`` turns arguments into jobs.
``run`` (with ``job``, ``lines``, ``resume``, ``sink``) streams a JSONL request file through the
engine to an ordered, resumable results file without loading pandas; ``frames`` and ``tables``
push parquet/CSV/JSONL tables through the pandas front end a chunk at a time; ``cache_cmd``
inspects and clears the cache; ``batches_cmd`` lists the Batch API jobs in its record.

May import: every other room. In: argv and files; out: results files, a summary, an exit status.
"""
