"""The parsers of ``dfbatch embed`` and ``dfbatch complete`` (table file in, parquet out)."""

from __future__ import annotations

import argparse
from typing import Any

from ..engine import constants as C
from .args import FORMATS, common_options, formatter, positive, temperature
from .help import COMPLETE_EXAMPLES, EMBED_EXAMPLES, EXIT_STATUS, FRAME_EPILOG


def _frame_parser(sub: Any, name: str, **kw: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(name, formatter_class=formatter, **kw)
    files = p.add_argument_group("input and output")
    files.add_argument("input", metavar="IN", help="parquet, CSV or JSONL file")
    files.add_argument("output", metavar="OUT", help="parquet file to write")
    files.add_argument(
        "--format", choices=FORMATS, default=None, help="IN's format (default: from its extension)"
    )
    files.add_argument(
        "--chunk-size",
        type=positive(int),
        metavar="ROWS",
        default=C.CLI_CHUNK_ROWS,
        help="rows read, sent and written at a time (default: %(default)s)",
    )
    files.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an OUT made from another input or with other options",
    )
    files.add_argument(
        "--base-url",
        metavar="URL",
        default=None,
        help="an OpenAI-compatible server (default: $OPENAI_BASE_URL or OpenAI)",
    )
    return p


def _batch_options(p: argparse.ArgumentParser) -> None:
    batch = p.add_argument_group("Batch API (half the price, answers within 24 h)")
    batch.add_argument(
        "--batch",
        action="store_true",
        help="send the rows through the Batch API (every chunk submitted first, then waited "
        "for together); rerun the same command to pick the batches up after an interruption",
    )
    batch.add_argument(
        "--poll-interval",
        type=positive(float),
        metavar="SECONDS",
        default=None,
        help=f"first wait between status checks (default: {C.BATCH_POLL_INTERVAL:g}; 1.5x "
        "longer after each, up to 5 minutes)",
    )


def embed_parser(sub: Any) -> None:
    status = EXIT_STATUS.format(unit="row", where="the embedding_error column")
    p = _frame_parser(
        sub,
        "embed",
        help="add an embedding column to a table file",
        description="Embed one text column of a table; write the table with an 'embedding'\n"
        "column (list<float32>) and an 'embedding_error' column.",
        epilog=FRAME_EPILOG.format(
            examples=EMBED_EXAMPLES, accessor="df.llm.embed(COLUMN, ...)", status=status
        ),
    )
    what = p.add_argument_group("embedding")
    what.add_argument("--column", required=True, metavar="C", help="the column of texts")
    what.add_argument(
        "--model", default="text-embedding-3-small", help="embedding model (default: %(default)s)"
    )
    what.add_argument(
        "--dimensions",
        type=positive(int),
        metavar="N",
        help="shorten the vectors to N dimensions (text-embedding-3 models)",
    )
    what.add_argument(
        "--batch-size",
        type=positive(int),
        metavar="N",
        help="texts per request (default: as many as fit, up to 2048)",
    )
    what.add_argument(
        "--truncate",
        action="store_true",
        help="cut texts over the model's token limit instead of failing them",
    )
    _batch_options(p)
    common_options(p, cookbook=False)


def batches_parser(sub: Any) -> None:
    p = sub.add_parser(
        "batches",
        formatter_class=formatter,
        help="list the Batch API jobs submitted from this cache, and their state",
        description="The Batch API jobs recorded in the response cache (as last seen; no\n"
        "server is called). Rerun the call that made a job to wait for it and download it.",
        epilog="examples:\n  dfbatch batches\n  dfbatch batches --open --json\n",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--open", action="store_true", help="only jobs not yet downloaded")
    p.add_argument(
        "--cache",
        metavar="PATH",
        default=None,
        help="cache file (default: $DFBATCH_CACHE_DIR/cache.sqlite or the user cache dir)",
    )
    p.add_argument("--log-level", type=int, default=30, metavar="LEVEL", help=argparse.SUPPRESS)


def complete_parser(sub: Any) -> None:
    status = EXIT_STATUS.format(unit="row", where="the completion_error column")
    p = _frame_parser(
        sub,
        "complete",
        help="add the model's answer to a prompt for each row",
        description="Fill a prompt template with each row's columns, ask a chat model, and\n"
        "write the table with a 'completion' column (or one column per JSON field with\n"
        "--expand) and a 'completion_error' column.",
        epilog=FRAME_EPILOG.format(
            examples=COMPLETE_EXAMPLES, accessor="df.llm.complete(PROMPT, ...)", status=status
        ),
    )
    what = p.add_argument_group("prompt and answer")
    what.add_argument(
        "--prompt",
        required=True,
        metavar="TEMPLATE",
        help='text with {column} fields, e.g. "Summarize: {text}"',
    )
    what.add_argument("--model", default="gpt-4o-mini", help="chat model (default: %(default)s)")
    what.add_argument("--system", metavar="TEXT", help="a system message for every row")
    what.add_argument(
        "--max-tokens", type=positive(int), metavar="N", help="longest answer, in tokens"
    )
    what.add_argument(
        "--temperature", type=temperature, metavar="T", help="sampling temperature (0 to 2)"
    )
    what.add_argument(
        "--n",
        type=positive(int),
        default=1,
        metavar="N",
        help="answers per row (a list when N > 1)",
    )
    json_group = what.add_mutually_exclusive_group()
    json_group.add_argument(
        "--json-schema", metavar="FILE", help="answer as JSON following this JSON schema (a file)"
    )
    json_group.add_argument(
        "--json-object",
        action="store_true",
        help="answer as a JSON object (stored as its JSON text)",
    )
    what.add_argument(
        "--expand",
        action="store_true",
        help="one column per property of --json-schema instead of the JSON text",
    )
    _batch_options(p)
    common_options(p, cookbook=False)
