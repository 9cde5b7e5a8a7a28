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

#: Full-jitter backoff: wait = uniform(0, min(BACKOFF_MAX, BACKOFF_BASE * 2**(attempt-1))).
BACKOFF_BASE = 0.5
BACKOFF_MAX = 20.0
#: A server's retry-after is honoured up to this many seconds (the SDK's cap is 60).
RETRY_AFTER_MAX = 120.0
#: Cool-down used after a 429 that carries no retry-after.
DEFAULT_COOL_DOWN = 1.0

#: With rpm/tpm given, the first request goes alone until answered or for this many seconds:
#: long enough for a refused key (answered at once) to stop the run after one request.
PROBE_GRACE = 0.5

#: Pacing: how many seconds of capacity may be spent at once. Servers enforce per-minute
#: limits over 1 s windows, so the client never bursts more than a small slice of a second.
BURST_SECONDS = 0.05
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
