"""An OpenAI API simulator for tests, demos and benchmarks, with exact expected answers.

Standalone: needs aiohttp and numpy, nothing else from dfbatch. Binds to 127.0.0.1 only.

    >>> from dfbatch.testing import Simulator, expected_embedding
    >>> with Simulator(rpm=6000, tpm=1_000_000) as sim:
    ...     url = sim.base_url          # "http://127.0.0.1:<port>/v1"
    ...     # point a client at url; check its output against expected_embedding(text)

Embeddings are exact: ``np.frombuffer(base64.b64decode(s), "<f4")`` (base64) and
``np.array(values, dtype=np.float32)`` (float: 9 significant digits) both equal
:func:`expected_embedding`. Prefer base64 for load: float JSON costs ~0.6 ms per 1536-d vector
to write and more to parse.

Command line: ``python -m dfbatch.testing --port 8000 --rpm 6000 --latency 0.2``.
"""

from ._answers import (
    count_tokens,
    expected_completion,
    expected_content,
    expected_embedding,
    expected_embeddings,
)
from ._batches import BatchFaults, BatchStats
from ._ratelimit import RateLimiter, TokenBucket, go_duration
from ._simulator import KNOWN_MODELS, Faults, Simulator
from ._stats import SimStats

__all__ = [
    "KNOWN_MODELS",
    "BatchFaults",
    "BatchStats",
    "Faults",
    "RateLimiter",
    "SimStats",
    "Simulator",
    "TokenBucket",
    "count_tokens",
    "expected_completion",
    "expected_content",
    "expected_embedding",
    "expected_embeddings",
    "go_duration",
]
