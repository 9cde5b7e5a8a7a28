"""The help texts: examples, behaviour and exit statuses, shown in each command's epilog."""

from __future__ import annotations

from ..engine import constants as C

EXIT_STATUS = """\
exit status:
  0    every {unit} succeeded
  1    some {unit}s failed; each one's error is in the output ({where})
  2    bad arguments or files; nothing was sent
  3    the run was stopped: the server refused every request (wrong key, no quota,
       unknown model) or the output could not be written; rerun the same command to
       resume once fixed
  130  interrupted (Ctrl-C or SIGTERM); rerun the same command to resume"""

RUN_EPILOG = f"""\
examples:
  dfbatch run requests.jsonl                     # results in requests_results.jsonl
  dfbatch run requests.jsonl -o out.jsonl --url https://api.openai.com/v1/chat/completions \\
      --rpm 5000 --tpm 2000000

  the cookbook's api_request_parallel_processor.py command line works unchanged:
  dfbatch run --requests_filepath data/requests.jsonl \\
      --save_filepath data/requests_results.jsonl \\
      --request_url https://api.openai.com/v1/embeddings \\
      --max_requests_per_minute 1500 --max_tokens_per_minute 6250000 \\
      --token_encoding_name cl100k_base --max_attempts 5 --logging_level 20

input and output:
  IN has one JSON request body per line (read with json.loads, never evaluated). An optional
  "metadata" key is not sent; it is appended to the line's result. Each input line gets one
  output line, [request, response] or [request, response, metadata]; a line that failed
  gets [request, [error]] (+ metadata), the error a dict (status, code, type, message,
  request_id). A line that cannot be a request (not JSON, not an object, no "model") is not
  sent: its result is [the line or null, [{{"code": "invalid_request_line", ...}}]].

order:
  Results are written in input order. A line that keeps failing holds back the lines
  after it: the run goes on until it is K = {C.CLI_REORDER_FACTOR} x --max-in-flight lines ahead of
  it, then waits for it. The wait is bounded: the line ends after at most --max-attempts
  attempts (each at most --timeout seconds, with backoff of at most {C.BACKOFF_MAX:.0f} s, or
  the server's Retry-After up to {C.RETRY_AFTER_MAX:.0f} s) and is then written as an error.
  --unordered writes each result as soon as it ends.

resume:
  Rerun the same command after a crash, a kill or Ctrl-C: the lines that already have a
  result are skipped, answers received but not yet written come from the response cache,
  and the rest is sent. A finished output is left alone; an output from other requests is
  refused (--overwrite starts over; with the cache on, only failed lines are sent again).

{EXIT_STATUS.format(unit="line", where="[request, [error]]")}
"""

FRAME_EPILOG = """\
examples:
{examples}

IN is parquet, CSV or JSONL (by its extension, or --format); OUT is parquet: IN's columns
plus the new ones, as {accessor} gives them. The file is read, sent and written
--chunk-size rows at a time, so it may be larger than memory; OUT appears when complete.
A rerun after a crash or Ctrl-C sends no request for rows answered before (the response
cache has them); a rerun on a finished OUT does nothing.

{status}
"""

EMBED_EXAMPLES = """\
  dfbatch embed reviews.parquet reviews_emb.parquet --column text
  dfbatch embed docs.csv docs.parquet --column body --model text-embedding-3-large \\
      --dimensions 256 --rpm 3000 --tpm 1000000"""

COMPLETE_EXAMPLES = """\
  dfbatch complete reviews.csv summaries.parquet --prompt "Summarize: {text}" --max-tokens 60
  dfbatch complete tickets.jsonl triage.parquet --prompt "Ticket: {body}" \\
      --system "Classify the ticket." --json-schema schema.json --expand"""
