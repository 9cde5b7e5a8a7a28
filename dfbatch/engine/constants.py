"""Every number dfbatch uses, in one place, with the reason for each."""

from __future__ import annotations

#: Same meaning as the openai SDK's ``base_url``; overridden by ``OPENAI_BASE_URL``.
DEFAULT_BASE_URL = "https://api.openai.com/v1"

#: Requests in flight at once. 30,000 RPM at 2 s latency needs 1,000 open requests, and a
#: little more once the client's and the server's own delays are added: 20% headroom.
DEFAULT_MAX_IN_FLIGHT = 1_200
#: Requests that may wait at the pacing gate beyond those in flight (a share of the cap), so
#: a request waiting for its turn never holds an HTTP slot. Memory is bounded by the sum.
QUEUED_SHARE = 0.25

#: Attempts per request, the first included (stamina and the SDK bound retries too).
DEFAULT_MAX_ATTEMPTS = 5

#: Seconds before a hung request is abandoned and retried (the SDK waits 600 s).
DEFAULT_TIMEOUT = 60.0
#: Seconds to open a TCP connection.
DEFAULT_CONNECT_TIMEOUT = 10.0
#: Bytes an answer's body may hold, before and after decompression: twice the largest real
#: answer (2,048 vectors x 3,072 float32 in base64, about 34 MB), so a server streaming without
#: end, a 500 MB body or a gzip bomb costs at most this much memory per request in flight.
#: ``DFBATCH_MAX_RESPONSE_MIB`` (in MiB) or the transports' ``max_response_bytes`` change it.
MAX_RESPONSE_BYTES = 64 * 2**20
#: Bytes of an answer's status line and headers (a real one is under 2 KiB).
MAX_HEADER_BYTES = 64 * 2**10

#: Full-jitter backoff: wait = uniform(0, min(BACKOFF_MAX, BACKOFF_BASE * 2**(attempt-1))).
BACKOFF_BASE = 0.5
BACKOFF_MAX = 20.0
#: A server's retry-after is honoured up to this many seconds (the SDK's cap is 60).
RETRY_AFTER_MAX = 120.0
#: Cool-down used after a 429 that carries no retry-after.
DEFAULT_COOL_DOWN = 1.0
#: A request whose 429s are only rate-limit waits is retried without using up an attempt while
#: the server answers other requests; once nothing but 429s comes back, every 429 counts. This
#: caps the free ones anyway (a safety net; one each retry-after, it is hours).
MAX_RATE_LIMIT_WAITS = 1_000

#: The longest window a server enforces a limit over (a per-minute limit), in seconds. What a
#: server says may hold the pace back at most this long ...
LIMIT_WINDOW_MAX = 60.0
#: ... so no wait the limiter computes exceeds a window plus the longest retry-after honoured.
LIMITER_MAX_WAIT = LIMIT_WINDOW_MAX + RETRY_AFTER_MAX
#: Largest count believed from an x-ratelimit-limit-* / -remaining-* header (the largest real
#: limits are about 10^10 tokens a minute); a limit outside [1, this] is ignored, a remaining
#: count is clamped to [0, this].
HEADER_MAX_COUNT = 10**12

#: With rpm/tpm given, the first request goes alone until answered or for this many seconds:
#: long enough for a refused key (answered at once) to stop the run after one request. If the
#: first answer is slower, the number allowed in flight doubles each time the wait has doubled
#: (2 after 0.5 s, 4 after 1.5 s, 8 after 3.5 s...): at most 1 + t / PROBE_GRACE requests are
#: sent in the first t seconds without an answer, however slow the machine or the server.
PROBE_GRACE = 0.5

#: Pacing: how many seconds of capacity may be spent at once. Servers enforce per-minute
#: limits over 1 s windows, so the client never bursts more than a small slice of a second.
BURST_SECONDS = 0.05
#: Seconds of pacing a late event loop may catch up on (a callback that ran long, a GC pause,
#: the process descheduled): the server's bucket refilled meanwhile, so the requests that were
#: due go at once instead of that time being lost. With BURST_SECONDS this is 0.3 s of the
#: server's one-second share at most: such a burst always fits.
PACE_CATCH_UP = 0.25
#: Fraction of a server-announced limit the client paces at, keeping a margin for clock skew.
HEADER_LIMIT_SHARE = 0.99
#: After a 429 the pace drops to this share of what it was (once per cool-down) ...
BACKOFF_RATE_FACTOR = 0.7
#: ... or to this share when the client already paces under a limit the server announced
#: (the 429 then comes from a burst at the server, not from a pace that is too high) ...
BACKOFF_RATE_FACTOR_ANNOUNCED = 0.9
#: ... and climbs back by this share of the target per second without a 429.
RATE_RECOVERY_PER_SECOND = 0.05
#: Unpaced slow start grows the window while a round trip takes at most twice the fastest
#: one plus this many seconds; beyond that, requests are queueing at the server.
QUEUEING_SLACK = 0.005

#: Completion tokens assumed when a request sets no max_tokens / max_completion_tokens.
#: The server reserves tokens for the answer; too low an estimate overruns TPM.
DEFAULT_COMPLETION_TOKENS = 1_024
#: Characters per token when no tiktoken encoding can be loaded (a deliberate overestimate).
CHARS_PER_TOKEN_FALLBACK = 3

#: Embeddings API limits (per request and per input).
EMBED_MAX_INPUTS = 2_048
EMBED_MAX_REQUEST_TOKENS = 300_000
EMBED_MAX_INPUT_TOKENS = 8_191
#: A pack of embedding inputs holds at most this share of what the server takes in one
#: second (TPM / 60, configured or announced): a server that enforces TPM over 1 s windows
#: then takes it without waiting for an exactly full bucket, and never refuses it outright.
EMBED_PACK_WINDOW_SHARE = 0.5

#: Context windows (prompt + answer tokens) by model-name prefix, the longest matching prefix
#: wins. A request's token estimate is capped at n x its model's window: a request larger
#: than that is refused unprocessed, so charging more would only stall the rows after it.
MODEL_CONTEXT_TOKENS: dict[str, int] = {
    "gpt-5": 400_000,
    "gpt-4.1": 1_047_576,
    "gpt-4.5": 128_000,
    "gpt-4o": 128_000,
    "chatgpt-4o": 128_000,
    "gpt-4-turbo": 128_000,
    "gpt-4-1106": 128_000,
    "gpt-4-0125": 128_000,
    "gpt-4-32k": 32_768,
    "gpt-4": 8_192,
    "gpt-3.5-turbo-instruct": 4_096,
    "gpt-3.5-turbo": 16_385,
    "gpt-35-turbo": 16_385,
    "gpt-oss": 131_072,
    "o1-mini": 128_000,
    "o1-preview": 128_000,
    "o1": 200_000,
    "o3": 200_000,
    "o4": 200_000,
    "davinci-002": 16_384,
    "babbage-002": 16_384,
}
#: For models not in the table (Azure deployment names, other servers' models): the most
#: common window. Too low a guess costs a few 429s, which the pace absorbs; too high a one
#: lets an oversized row hold the whole run back.
DEFAULT_CONTEXT_TOKENS = 128_000

#: Vector lengths accepted in an answer: the largest models known give 4,096; a longer vector
#: is refused before a block of rows x dimensions is allocated for it.
EMBED_MAX_DIMENSIONS = 16_384
#: Native vector length of known embedding models: an answer of another length, when no
#: ``dimensions`` was asked, is a wrong answer (never cached).
EMBEDDING_DIMENSIONS = {
    "text-embedding-3-small": 1_536,
    "text-embedding-3-large": 3_072,
    "text-embedding-ada-002": 1_536,
}

#: Answers: JSON nested deeper than this is refused before anything walks it (OpenAI's nest
#: about 8 deep; json.dumps and repr recurse and fail near 1,000, orjson at 255).
RESPONSE_MAX_DEPTH = 64
#: Answers: the largest token count a ``usage`` field may report for one request (a 2M-token
#: context times n = 128 is 256M); anything else there is a wrong answer, never counted.
USAGE_MAX_TOKENS = 10**9
#: Characters of a server's or a model's text quoted in a row's error (a refusal, a bad value).
ERROR_QUOTE_CHARS = 300

#: Chat token formula (OpenAI cookbook, current models): overhead per message, per ``name``,
#: and for priming the reply; TPM estimates must match how the server counts prompts.
CHAT_TOKENS_PER_MESSAGE = 3
CHAT_TOKENS_PER_NAME = 1
CHAT_REPLY_PRIMING_TOKENS = 3
#: Tokens counted per non-text content part (image, audio, file): a low-detail image's cost.
NON_TEXT_PART_TOKENS = 85
#: Legacy /completions default max_tokens (the API's own default), so estimates match reservations.
COMPLETIONS_DEFAULT_MAX_TOKENS = 16
#: Encodings assumed for model names tiktoken and dfbatch's rules do not know (Azure deployments).
DEFAULT_CHAT_ENCODING = "o200k_base"
DEFAULT_EMBEDDING_ENCODING = "cl100k_base"
#: Characters of recent strings whose token counts are remembered (one system prompt, many rows).
TOKEN_MEMO_CHARS = 1_000_000

#: Response cache: seconds an answer waits in memory before it is written (what a kill -9 loses).
CACHE_FLUSH_INTERVAL = 0.2
#: Buffered answers that force a write before the interval is up (one transaction each).
CACHE_FLUSH_MAX_ITEMS = 5_000
#: Buffered bytes that force a write before the interval is up (about 5,000 1,536-d vectors).
CACHE_FLUSH_MAX_BYTES = 32 * 2**20
#: Seconds a write waits while another kernel or process holds the store's write lock.
CACHE_BUSY_TIMEOUT = 10.0
#: Keys per ``SELECT ... WHERE key IN (...)``: far below SQLite's variable limit (999 before 3.32).
CACHE_QUERY_CHUNK = 500
#: Page size of new stores: random keys dirty one index page per answer, so pages stay small.
CACHE_PAGE_SIZE = 4_096
#: Bytes of the store read through mmap: 100,000 vectors read without a syscall per page.
CACHE_MMAP_BYTES = 2**30
#: Bytes the write-ahead log is cut back to after a checkpoint.
CACHE_WAL_LIMIT_BYTES = 64 * 2**20

#: Command line (``dfbatch run``): the cookbook script's defaults, kept so its command lines
#: mean the same thing under dfbatch.
CLI_REQUEST_URL = "https://api.openai.com/v1/embeddings"
CLI_RPM = 1_500
CLI_TPM = 125_000
#: The ordered writer keeps at most this many times ``max_in_flight`` lines ahead of the
#: oldest unwritten line (the reorder buffer's bound).
CLI_REORDER_FACTOR = 2
#: Lines parsed and looked up in the response cache at once.
CLI_LOOKUP_BATCH = 256
#: Seconds between status lines in the log when no progress bar is shown.
CLI_STATUS_INTERVAL = 10.0
#: Failed or malformed lines logged one by one before the rest are only counted.
CLI_LOGGED_FAILURES = 20
#: ``dfbatch embed`` / ``complete``: rows read, sent and written per chunk (memory bound).
CLI_CHUNK_ROWS = 10_000
#: ``dfbatch run``: KiB of SQLite page cache on the response cache's connection (SQLite's own
#: default); answers are written once and looked up once, so a larger cache only adds memory.
CLI_CACHE_PAGES_KIB = 2_000
#: ``dfbatch run``: seconds between cache commits. An answer received but neither flushed nor yet
#: written in order is asked again after a kill -9, so keep this short (a commit is cheap in WAL).
CLI_CACHE_FLUSH_INTERVAL = 0.02

#: Run report: time buckets kept per series (one second each until a run outlasts them; then
#: neighbours merge and the width doubles), so a report's size does not grow with the run.
TIMELINE_MAX_BUCKETS = 1_024
#: Latency histogram: log-spaced bins from 10**MIN_EXP to 10**MAX_EXP seconds.
LATENCY_MIN_EXP = -3
LATENCY_MAX_EXP = 3
LATENCY_BINS_PER_DECADE = 20
#: Latency percentiles a report shows.
LATENCY_PERCENTILES = (50, 90, 99)
#: (RPM, TPM) OpenAI documents for its lowest paid tier (tier 1), by model prefix: the time an
#: estimate shows when no rpm/tpm is given (OpenAI's rate-limit guide, 2025-26).
DOCUMENTED_TIER1_LIMITS: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (500.0, 200_000.0),
    "text-embedding-3": (3_000.0, 1_000_000.0),
}
#: Batch API (``backend="batch"``): the API's limits on one input file and one batch ...
BATCH_MAX_LINES = 50_000
BATCH_MAX_FILE_BYTES = 200 * 2**20
BATCH_MAX_EMBEDDING_INPUTS = 50_000
#: ... the only completion window the API offers ...
BATCH_COMPLETION_WINDOW = "24h"
#: ... seconds before the second status poll (``poll_interval=``), the factor each poll
#: multiplies it by (back to the start when a batch ends), and its ceiling: a day-long batch
#: costs ~300 polls; a test against a fast simulator passes a small ``poll_interval``.
BATCH_POLL_INTERVAL = 10.0
BATCH_POLL_BACKOFF = 1.5
BATCH_POLL_MAX = 300.0
#: Seconds between tries at the submit lock while another process submits from the cache.
BATCH_LOCK_POLL = 0.1
#: Lines of an input file recorded in one transaction while it is written.
BATCH_RECORD_CHUNK = 5_000
#: Seconds a done batch's lines stay in the record: another process waiting for the same
#: batch reads its output back onto its rows with them (it polls at most every 300 s).
BATCH_LINES_KEEP = 86_400.0
#: Attempts of one files/batches call (5xx, 429, dropped connections), and its timeout (s):
#: an upload of 200 MB needs minutes.
BATCH_HTTP_ATTEMPTS = 5
BATCH_HTTP_TIMEOUT = 600.0
#: Bounds on what the server sends back: a status answer, one output line (2,048 inputs x
#: 3,072 dims in base64 is 34 MB), an output file.
BATCH_MAX_STATUS_BYTES = 4 * 2**20
BATCH_MAX_LINE_BYTES = 64 * 2**20
BATCH_MAX_OUTPUT_BYTES = 8 * 2**30
#: A batch refused for the enqueued-token limit while none of the job's own batches is
#: queued cannot pass by waiting for them: after this many refusals the run stops.
BATCH_LONE_REFUSALS = 3
#: Pages of ``GET /batches`` read to find a batch created just before a kill -9.
BATCH_LIST_PAGES = 20
#: Shared budgets (``limiter=``): a sender leases this many seconds of the account's rate at a
#: time, so a coordinator sees a few round trips per second per sender, not one per request.
LEASE_SLICE_SECONDS = 0.1
#: A slice may be spent from its start for this long; what is left then goes back to the pool.
#: Spending is thus confined to ``[start, start + ttl]``: with the slice and the burst
#: allowance this stays under one second, so the server's 1 s bucket is never overrun.
LEASE_TTL = 0.5
#: A coordinator grants a slice that starts at most this many seconds ahead; beyond it the
#: sender is told to ask again later (it never queues far into the future).
LEASE_MAX_AHEAD = 1.0
#: A sender asks for its next slice when what it holds falls to this share of one slice.
LEASE_REFILL_AT = 0.5
#: Seconds a waiting request re-checks the wallet while its next slice is on the way.
LEASE_POLL = 0.005
#: A wallet sizes its token slices by the mean tokens of about this many recent requests.
LEASE_TOKENS_MEAN_REQUESTS = 100
#: Seconds the lease loop sleeps between checks of its wallet when nothing woke it.
LEASE_LOOP_TICK = 0.05
#: Seconds without an ask after which a coordinator stops counting a sender as active.
LEASE_ACTIVE_SECONDS = 3.0
#: Seconds a lease round trip may take before the coordinator counts as unreachable ...
LEASE_TIMEOUT = 2.0
#: ... and, while it is, seconds between attempts to reach it again (the even split meanwhile).
LEASE_RETRY_ALONE = 1.0
#: Seconds a coordinator's shared state outlives its last use (Redis key expiry).
LEASE_STATE_TTL = 3_600
