"""The ``dfbatch`` command line: ``run``, ``embed``, ``complete``, ``cache`` and ``batches``.

    dfbatch run IN [-o OUT] [--url URL] [--rpm N] [--tpm N] ...    (see cli.run)
    dfbatch embed IN OUT --column C [--model M] ...                 (see cli.frames)
    dfbatch complete IN OUT --prompt "... {col} ..." ...            (see cli.frames)
    dfbatch cache info | clear [--model M] [--older-than 7d]        (see cli.cache_cmd)
    dfbatch batches [--open] [--json]                               (see cli.batches_cmd)

This module only parses arguments, configures logging (the library never does) and maps
what happened to an exit status: 0 all succeeded, 1 some lines or rows failed, 2 bad
arguments or files, 3 the run was stopped (refused by the server, or output not writable),
130 interrupted. The API key is wrapped in a Secret at once, and a logging filter replaces it
with ``<redacted>`` should it ever reach a message.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from ..engine.errors import ConfigurationError, DfbatchError, RunAbortedError
from .commands import COMMANDS, api_key
from .parser import build_parser

log = logging.getLogger(__name__)

_REDACTED = "<redacted>"
_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _Redact(logging.Filter):
    """Replaces the API key in any record (message, arguments, traceback)."""

    def __init__(self, secrets: Sequence[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s and len(s) >= 6]

    def _clean(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, _REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        clean = self._clean(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info:
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_text = self._clean(text)
        return True


class _TqdmHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes around the progress bar, so log lines do not tear it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
        except Exception:
            self.handleError(record)


@contextmanager
def _logging(level: int, secrets: Sequence[str]) -> Iterator[_Redact]:
    """``logging.basicConfig(level=..., stream=sys.stderr)`` for the command's lifetime."""
    root = logging.getLogger()
    handler = _TqdmHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_LOG_FORMAT))
    redact = _Redact(secrets)
    handler.addFilter(redact)
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(level)
    try:
        yield redact
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM stops the run like Ctrl-C: answers are flushed, the output stays resumable."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _is_cookbook_line(args: Sequence[str]) -> bool:
    """``dfbatch --requests_filepath ...``: the script's own flags, without a command."""
    return args[0].startswith("--") and any(
        a.split("=", 1)[0] in ("--requests_filepath", "--requests-filepath") for a in args
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dfbatch`` console script and ``python -m dfbatch``."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] not in COMMANDS and _is_cookbook_line(args_list):
        args_list.insert(0, "run")  # the cookbook's command line, with "dfbatch" as the script
    parser = build_parser()
    try:
        args = parser.parse_args(args_list)
    except SystemExit as exc:  # --help, --version, or a usage error (already printed)
        return exc.code if isinstance(exc.code, int) else 2
    secrets = [api_key(args) or "", os.environ.get("AZURE_OPENAI_API_KEY", "")]
    name = f"dfbatch {args.command}"
    with _logging(args.log_level, secrets) as redact, _sigterm_as_interrupt():
        try:
            return COMMANDS[args.command](args)
        except ConfigurationError as exc:
            print(f"{name}: error: {redact._clean(str(exc))}", file=sys.stderr)
            return 2
        except RunAbortedError as exc:
            print(
                f"{name}: stopped: {redact._clean(str(exc))}\n"
                "results written so far are kept; rerun the same command to resume once "
                "fixed",
                file=sys.stderr,
            )
            return 3
        except OSError as exc:
            print(
                f"{name}: stopped: {redact._clean(str(exc))}; rerun the same command to "
                "resume once fixed",
                file=sys.stderr,
            )
            return 3
        except DfbatchError as exc:
            print(f"{name}: error: {redact._clean(str(exc))}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print(
                f"\n{name}: interrupted; results written so far are kept and answers "
                "received are in the response cache: rerun the same command to resume",
                file=sys.stderr,
            )
            return 130


if __name__ == "__main__":
    raise SystemExit(main())
