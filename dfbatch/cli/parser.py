"""The ``dfbatch`` parser: one sub-parser per command, options grouped, examples in each epilog.

``dfbatch run`` takes the OpenAI cookbook script's flags verbatim (``--requests_filepath``,
``--max_requests_per_minute`` ...) beside short spellings (``IN``, ``--rpm`` ...), with the same
defaults and meaning.
"""

from __future__ import annotations

import argparse

from .. import __version__
from .args import cache_parser, formatter, run_parser
from .args_frames import batches_parser, complete_parser, embed_parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dfbatch",
        formatter_class=formatter,
        description="Push JSONL request files and tables through the OpenAI API (or a\n"
        "compatible server) as fast as the rate limits allow, never above them.",
        epilog="run 'dfbatch COMMAND --help' for a command's options.\n"
        "cookbook users: 'dfbatch --requests_filepath ...' is 'dfbatch run --requests_filepath "
        "...'.",
    )
    p.add_argument("--version", action="version", version=f"dfbatch {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run_parser(sub)
    embed_parser(sub)
    complete_parser(sub)
    cache_parser(sub)
    batches_parser(sub)
    return p
