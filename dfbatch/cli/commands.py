"""The commands behind the parsers: arguments -> a job -> run it -> what to print and exit with.

Only here are argparse values turned into the library's vocabulary (``rpm``, ``tpm``,
``max_attempts``, ``cache``, ``progress``); the jobs themselves live in ``cli.run``,
``cli.frames`` and ``cli.cache_cmd``, and import pandas only when a table is read.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from ..engine.config import check_url
from ..engine.errors import ConfigurationError
from ..jobs.sync import run_sync

log = logging.getLogger(__name__)


def api_key(args: argparse.Namespace) -> str | None:
    return getattr(args, "api_key", None) or os.environ.get("OPENAI_API_KEY") or None


def _cache_option(args: argparse.Namespace) -> Path | bool:
    if getattr(args, "no_cache", False):
        return False
    return Path(args.cache).expanduser() if args.cache else True


def _progress(args: argparse.Namespace) -> bool:
    if args.progress is not None:
        return bool(args.progress)
    return sys.stderr.isatty() and not os.environ.get("TQDM_DISABLE")


def _say(text: str, level: int) -> None:
    """The command's result: printed at INFO and below, else logged when it matters."""
    if level <= logging.INFO:
        print(text, file=sys.stderr, flush=True)


# -- commands --------------------------------------------------------------------------------


def _do_run(args: argparse.Namespace) -> int:
    from ..engine.config import ApiConfig
    from .job import RunJob
    from .run import run_job

    given = [x for x in (args.input, args.requests_filepath) if x]
    if not given:
        raise ConfigurationError(
            "give the requests file: dfbatch run IN (or --requests_filepath IN)"
        )
    if len(given) == 2 and given[0] != given[1]:
        raise ConfigurationError("IN and --requests_filepath name different files; give one")
    source = given[0]
    output = args.output or source.replace(".jsonl", "_results.jsonl")
    if output == source:
        raise ConfigurationError(
            f"cannot name the results file after {source} (no .jsonl in its name); pass -o OUT"
        )
    key = api_key(args)
    url = check_url(args.url, "--url")  # its scheme in lower case
    api = _resolve_api(ApiConfig, url, key)
    job = RunJob(
        requests=Path(source),
        output=Path(output),
        url=url,
        api=api,
        rpm=args.rpm,
        tpm=args.tpm,
        encoding=args.encoding,
        max_attempts=args.max_attempts,
        max_in_flight=args.max_in_flight,
        timeout=args.timeout,
        cache=_cache_option(args),
        ordered=not args.unordered,
        progress=_progress(args),
        overwrite=args.overwrite,
        budget=args.budget,
        price=args.price,
        report=_report_path(args.report),
        batch=args.batch,
        poll_interval=args.poll_interval,
        limiter=args.limiter,
    )
    if args.dry_run:
        from .estimate import estimate_run

        print(estimate_run(job))
        return 0
    result = run_sync(lambda: run_job(job))
    _say(result.summary, args.log_level)
    if result.failed and args.log_level > logging.INFO:
        log.warning(
            "%s of %s lines failed; their errors are in %s",
            f"{result.failed:,}",
            f"{result.lines:,}",
            job.output,
        )
    return result.exit_status


def _report_path(report: str | None) -> Path | None:
    """``--report FILE``: .png/.svg/.pdf (needs matplotlib, checked now) or .html."""
    if report is None:
        return None
    path = Path(report).expanduser()
    suffix = path.suffix.lower()
    if suffix not in (".png", ".svg", ".pdf", ".html"):
        raise ConfigurationError(f"--report must end in .png, .svg, .pdf or .html, got {report!r}")
    if suffix != ".html":
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:
            raise ConfigurationError(
                f'--report {report} needs matplotlib: pip install "dfbatch[plot]" '
                "(or write --report FILE.html)"
            )
    return path


def _resolve_api(api_config: Any, url: str, key: str | None) -> Any:
    from urllib.parse import urlsplit

    if not key and (urlsplit(url).hostname or "") == "api.openai.com":
        raise ConfigurationError(
            "no API key: pass --api-key KEY or set the OPENAI_API_KEY environment variable"
        )
    return api_config.resolve(base_url=url, api_key=key)


def _frame_job(args: argparse.Namespace) -> Any:
    from .frames import FrameJob
    from .tables import field_types

    run_options = {
        "base_url": check_url(args.base_url, "--base-url") if args.base_url else None,
        "api_key": api_key(args),
        "rpm": args.rpm,
        "tpm": args.tpm,
        "limiter": args.limiter,
        "max_attempts": args.max_attempts,
        "max_in_flight": args.max_in_flight,
        "timeout": args.timeout,
        "progress": _progress(args),
        "budget": args.budget,
        "price": args.price,
    }
    if args.batch:
        run_options["backend"] = "batch"
        run_options["poll_interval"] = args.poll_interval
    expand_fields = None
    if args.command == "embed":
        options: dict[str, Any] = {
            "column": args.column,
            "model": args.model,
            "dimensions": args.dimensions,
            "batch_size": args.batch_size,
            "truncate": args.truncate,
        }
    else:
        response_format: Any = "json_object" if args.json_object else None
        if args.json_schema:
            response_format = _read_schema(args.json_schema)
        if args.expand:
            if not args.json_schema:
                raise ConfigurationError(
                    "--expand needs --json-schema FILE: its properties name the columns"
                )
            inner = response_format.get("json_schema", {}).get("schema", response_format)
            expand_fields = field_types(inner)
        options = {
            "prompt": args.prompt,
            "model": args.model,
            "system": args.system,
            "max_tokens": args.max_tokens,
            "temperature": args.temperature,
            "n": args.n,
            "response_format": response_format,
            "expand": args.expand,
        }
    return FrameJob(
        command=args.command,
        input=Path(args.input),
        output=Path(args.output),
        fmt=args.format,
        chunk_rows=args.chunk_size,
        overwrite=args.overwrite,
        options=options,
        run_options=run_options,
        cache=_cache_option(args),
        expand_fields=expand_fields,
    )


def _read_schema(path: str) -> dict[str, Any]:
    try:
        schema = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigurationError(f"cannot read --json-schema {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ConfigurationError(f"--json-schema {path} is not JSON: {exc}") from None
    if not isinstance(schema, dict):
        raise ConfigurationError(f"--json-schema {path} must hold a JSON object (a schema)")
    return schema


def _do_frames(args: argparse.Namespace) -> int:
    from .frames import run_frames

    job = _frame_job(args)
    if args.dry_run:
        from .estimate import estimate_frames

        print(run_sync(lambda: estimate_frames(job)))
        return 0
    if job.run_options["progress"]:
        # The accessor prints each chunk's summary under its bar; do not log it twice.
        logging.getLogger("dfbatch.jobs.run").setLevel(logging.WARNING)
    try:
        result = run_sync(lambda: run_frames(job))
    finally:
        logging.getLogger("dfbatch.jobs.run").setLevel(logging.NOTSET)
    _say(result.summary, args.log_level)
    if result.failed and args.log_level > logging.INFO:
        log.warning(
            "%s of %s rows failed; their errors are in the %s_error column of %s",
            f"{result.failed:,}",
            f"{result.rows:,}",
            job.output_name,
            job.output,
        )
    return result.exit_status


def _do_cache(args: argparse.Namespace) -> int:
    from .cache_cmd import cache_clear, cache_info

    path = Path(args.cache).expanduser() if args.cache else None
    if args.action == "info":
        print(cache_info(path, as_json=args.json))
    else:
        print(cache_clear(path, model=args.model, older_than=args.older_than))
    return 0


def _do_batches(args: argparse.Namespace) -> int:
    from .batches_cmd import do_batches

    return do_batches(args)


COMMANDS = {
    "run": _do_run,
    "embed": _do_frames,
    "complete": _do_frames,
    "cache": _do_cache,
    "batches": _do_batches,
}
