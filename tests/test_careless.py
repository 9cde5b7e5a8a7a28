"""Issue 9: careless inputs get a clear error (run-level: at once, before any request; per
row: in that row's error column) and nothing else is lost."""

from __future__ import annotations

import gc
import io
import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import dfbatch  # noqa: F401  (registers .llm)
from dfbatch import ApiConfig, ConfigurationError, Engine, RowsFailedError
from dfbatch.cache.store import ResponseCache
from dfbatch.cli.main import main
from dfbatch.testing import Simulator

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("isolated_env")


@pytest.fixture(scope="module")
def sim():  # type: ignore[no-untyped-def]
    with Simulator() as s:
        yield s


@pytest.fixture
def opts(sim) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    return {"base_url": sim.base_url, "api_key": "sk-test", "progress": False, "cache": False}


class NothingSent:
    """Asserts, on exit, that the simulator received no request and the frame is unchanged."""

    def __init__(self, sim: Simulator, *frames: pd.DataFrame) -> None:
        self.sim, self.frames = sim, frames
        self.before = [f.copy() for f in frames]

    def __enter__(self) -> NothingSent:
        self.requests = self.sim.stats.requests
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.sim.stats.requests == self.requests, "a request was sent"
        for frame, before in zip(self.frames, self.before, strict=True):
            pd.testing.assert_frame_equal(frame, before)


def echo(text: str) -> str:
    """The simulator's answer to a one-message prompt."""
    return "echo: " + text


def cli(*args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    status = main(list(args))
    return status, capsys.readouterr().err


def table(path: Path, df: pd.DataFrame) -> Path:
    df.to_csv(path, index=False)
    return path


# -- 3. a field is a column name (and a format spec), nothing evaluated ------------------------


@pytest.mark.parametrize(
    "template",
    [
        "{text.__class__.__mro__}",
        "{text[0]}",
        "Where: {p.__class__.__new__.__globals__[os].environ[SECRET]}",
    ],
)
def test_attribute_and_index_access_is_refused_before_any_request(
    sim, opts, monkeypatch, template
) -> None:  # type: ignore[no-untyped-def]
    """Attribute or index access in a field is a ConfigurationError before any request."""
    monkeypatch.setenv("SECRET", "hunter2-environment-value")
    df = pd.DataFrame({"text": ["hello"], "p": [Path("/tmp")]})
    with NothingSent(sim, df), pytest.raises(ConfigurationError) as caught:
        df.llm.complete(template, **opts)
    message = str(caught.value)
    assert "is not a column" in message and "attribute and index access" in message
    assert "format spec" in message and "function of the row" in message
    assert "hunter2" not in message


def test_cli_prompt_with_attribute_access_exits_2_and_writes_nothing(sim, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    """dfbatch complete --prompt "{text.__class__}": exit 2, the reason, no request, no OUT."""
    source = table(tmp_path / "in.csv", pd.DataFrame({"text": ["a", "b"]}))
    out = tmp_path / "out.parquet"
    before = sim.stats.requests
    status, err = cli("complete", str(source), str(out), "--prompt", "{text.__class__}",
                      "--base-url", sim.base_url, "--no-progress", capsys=capsys)  # fmt: skip
    assert status == 2
    assert "{text.__class__} is not a column" in err and "Traceback" not in err
    assert sim.stats.requests == before
    assert not out.exists() and not (tmp_path / "out.parquet.partial").exists()


def test_field_names_match_columns_exactly(opts) -> None:  # type: ignore[no-untyped-def]
    """Dots, brackets and spaces are part of a column's name; {{ }} stay literal braces."""
    df = pd.DataFrame({"a.b": ["x"], "c[0]": ["y"], "first name": ["Ann"], 0: [7]})
    out = df.llm.complete("{a.b}|{c[0]}|{first name}|{0:03d}|{{literal}}", **opts)
    assert out["completion"].tolist() == [echo("x|y|Ann|007|{literal}")]
    assert out["completion_error"].isna().all()


def test_conversions_and_format_specs_work(opts) -> None:  # type: ignore[no-untyped-def]
    """!r, !s, !a and format specs, nested one level ({n:>{width}}), take the row's values."""
    df = pd.DataFrame({"t": ["é", "b"], "n": [3.14159, 2.0], "width": [6, 4]})
    out = df.llm.complete("{t!r} {t!a} {t!s:>2} {n:.2f} [{n:>{width}}]", **opts)
    assert out["completion"].tolist() == [
        echo("'é' '\\xe9'  é 3.14 [3.14159]"),
        echo("'b' 'b'  b 2.00 [ 2.0]"),
    ]


@pytest.mark.parametrize(
    ("template", "match"),
    [
        ("{n:{width:{x}}}", "inside a format spec cannot have fields of its own"),
        ("{text!x}", "^prompt field {text!x}: unknown conversion !x; use !r, !s or !a"),
        ("Say {text", "not valid"),
        ("Say {}", "empty field"),
        ("{1}", "does not have"),
    ],
)
def test_bad_templates_are_refused_before_any_request(sim, opts, template, match) -> None:  # type: ignore[no-untyped-def]
    """Deeper nesting, unknown conversions, broken braces and unknown fields: refused at once."""
    df = pd.DataFrame({"text": ["a"], "n": [1], "width": [3], "x": ["d"]})
    with NothingSent(sim, df), pytest.raises(ConfigurationError, match=match):
        df.llm.complete(template, **opts)


def test_a_field_matching_two_columns_is_refused(sim, opts) -> None:  # type: ignore[no-untyped-def]
    """Columns 0 and "0" both read {0}: refused, naming both, instead of picking one."""
    df = pd.DataFrame([["a", "b"]], columns=pd.Index([0, "0"], dtype=object))
    with NothingSent(sim, df), pytest.raises(ConfigurationError, match="matches 2 columns"):
        df.llm.complete("{0}", **opts)


# -- 13. a Series named 0 or "", and an int column 0 -----------------------------------------


@pytest.mark.parametrize("name", [0, "", None, "text"])
@pytest.mark.parametrize("template", ["{}", "Say {}", "Say {0}"])
def test_series_of_any_name_completes(opts, name, template) -> None:  # type: ignore[no-untyped-def]
    """series.llm.complete works whatever the Series' name; {} and {0} are its value."""
    series = pd.Series(["a", None, "c"], name=name, index=[5, 6, 7])
    out = series.llm.complete(template, **opts)
    prefix = template.split("{")[0]
    assert out["completion"].tolist() == [echo(prefix + "a"), None, echo(prefix + "c")]
    assert out.index.tolist() == [5, 6, 7] and out["completion_error"].isna().all()


def test_read_csv_header_none_column_completes_and_embeds(opts) -> None:  # type: ignore[no-untyped-def]
    """pd.read_csv(..., header=None)[0] (a Series named 0) completes and embeds."""
    series = pd.read_csv(io.StringIO("first\nsecond\n"), header=None)[0]
    assert series.name == 0
    out = series.llm.complete(**opts)
    assert out["completion"].tolist() == [echo("first"), echo("second")]
    vectors = series.llm.embed(**opts)
    assert vectors["embedding_error"].isna().all() and len(vectors["embedding"][1]) == 1536


def test_int_column_0_is_field_0(opts) -> None:  # type: ignore[no-untyped-def]
    """A frame from header=None has int columns: {0} and {1} name them."""
    df = pd.read_csv(io.StringIO("a,1\nb,2\n"), header=None)
    out = df.llm.complete("{0} is {1}", **opts)
    assert out["completion"].tolist() == [echo("a is 1"), echo("b is 2")]


# -- 14. raw exceptions where a clear error belongs -------------------------------------------


def test_format_spec_failing_on_one_row_is_that_rows_error(sim, opts) -> None:  # type: ignore[no-untyped-def]
    """{n:d} with one float among ints: that row's error, the others answered."""
    df = pd.DataFrame({"n": pd.Series([1, 2.5, 3], dtype=object)})
    before = sim.stats.requests
    out = df.llm.complete("Number {n:d}", **opts)
    assert out["completion"].tolist() == [echo("Number 1"), None, echo("Number 3")]
    error = out["completion_error"][1]
    assert error.startswith("invalid prompt: prompt field {n:d}") and "float" in error
    assert sim.stats.requests == before + 2
    assert out.attrs["dfbatch"]["failures_by_cause"] == {"invalid prompt": 1}
    with pytest.raises(RowsFailedError) as caught:
        df.llm.complete("Number {n:d}", errors="raise", **opts)
    assert caught.value.result["completion"][2] == echo("Number 3")


def test_cli_format_spec_failing_on_one_row_writes_its_error(sim, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    """dfbatch complete: a row its spec cannot format gets its error in OUT; exit 1."""
    source = table(tmp_path / "in.csv", pd.DataFrame({"n": [65, 1_114_112, 66]}))
    out = tmp_path / "out.parquet"
    status, err = cli("complete", str(source), str(out), "--prompt", "{n:c}",
                      "--base-url", sim.base_url, "--no-progress", capsys=capsys)  # fmt: skip
    assert status == 1 and "Traceback" not in err
    written = pq.read_table(out).to_pydict()
    assert written["completion"] == [echo("A"), None, echo("B")]
    assert "prompt field {n:c}" in written["completion_error"][1]
    assert written["n"] == [65, 1_114_112, 66]


@pytest.mark.parametrize(
    ("base_url", "match"),
    [
        ("http://127.0.0.1:99999/v1", "port from 1 to 65535"),
        ("http://127.0.0.1:0/v1", "port 0"),
        ("http:///v1", "no host"),
        ("ftp://127.0.0.1/v1", "http:// or https://"),
    ],
)
def test_bad_base_url_is_refused_before_any_request(sim, opts, base_url, match) -> None:  # type: ignore[no-untyped-def]
    """A port out of range, no host or another scheme: ConfigurationError, nothing sent."""
    df = pd.DataFrame({"text": ["a"]})
    with NothingSent(sim, df), pytest.raises(ConfigurationError, match=match):
        df.llm.complete("{text}", **{**opts, "base_url": base_url})
    with pytest.raises(ConfigurationError, match=match):
        df.llm.embed("text", **{**opts, "base_url": base_url})


def test_cli_bad_port_exits_2(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    """--base-url and --url with port 99999: exit 2 with the reason, no traceback."""
    source = table(tmp_path / "in.csv", pd.DataFrame({"text": ["a"]}))
    status, err = cli("embed", str(source), str(tmp_path / "o.parquet"), "--column", "text",
                      "--base-url", "http://127.0.0.1:99999/v1", capsys=capsys)  # fmt: skip
    assert status == 2 and "--base-url is not a valid URL" in err and "Traceback" not in err
    requests = tmp_path / "r.jsonl"
    requests.write_text(json.dumps({"model": "m", "input": "x"}) + "\n")
    status, err = cli("run", str(requests), "--url", "http://127.0.0.1:99999/v1/embeddings",
                      capsys=capsys)  # fmt: skip
    assert status == 2 and "--url is not a valid URL" in err


def test_credentials_in_base_url_are_refused_without_the_password(
    sim, opts, monkeypatch, tmp_path, capsys
) -> None:  # type: ignore[no-untyped-def]
    """user:password@ in the URL (with a proxy set, too): refused, the password never shown."""
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    url = "https://alice:s3cr3t-pw@gateway.example/v1"
    df = pd.DataFrame({"text": ["a"]})
    with NothingSent(sim, df), pytest.raises(ConfigurationError, match="credentials") as caught:
        df.llm.complete("{text}", **{**opts, "base_url": url})
    assert "s3cr3t" not in str(caught.value) and "gateway.example" in str(caught.value)
    assert "api_key" in str(caught.value) and "HTTPS_PROXY" in str(caught.value)
    source = table(tmp_path / "in.csv", df)
    status, err = cli("complete", str(source), str(tmp_path / "o.parquet"), "--prompt",
                      "{text}", "--base-url", url, capsys=capsys)  # fmt: skip
    assert status == 2 and "credentials" in err and "s3cr3t" not in err


def test_upper_case_scheme_is_accepted(sim, opts, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    """HTTP:// (any case) works, for base_url, --base-url and --url."""
    upper = sim.base_url.replace("http://", "HTTP://")
    assert ApiConfig.resolve(base_url=upper).base_url == sim.base_url
    out = pd.DataFrame({"text": ["a"]}).llm.complete("{text}", **{**opts, "base_url": upper})
    assert out["completion"].tolist() == [echo("a")]
    source = table(tmp_path / "in.csv", pd.DataFrame({"text": ["b"]}))
    status, _ = cli("complete", str(source), str(tmp_path / "o.parquet"), "--prompt", "{text}",
                    "--base-url", upper, "--no-cache", capsys=capsys)  # fmt: skip
    assert status == 0
    requests = tmp_path / "r.jsonl"
    requests.write_text(json.dumps({"model": "gpt-4o-mini", "messages": [
        {"role": "user", "content": "c"}]}) + "\n")  # fmt: skip
    status, _ = cli("run", str(requests), "--url", upper + "/chat/completions", "--no-cache",
                    capsys=capsys)  # fmt: skip
    assert status == 0
    line = json.loads((tmp_path / "r_results.jsonl").read_text())
    assert line[1]["choices"][0]["message"]["content"] == echo("c")


@pytest.mark.parametrize("cache", [0, 1, "", 2.5, ["a"]])
def test_cache_option_of_the_wrong_kind_is_refused(sim, opts, cache) -> None:  # type: ignore[no-untyped-def]
    """cache=0 (or 1, "", ...) is a ConfigurationError naming cache=False, nothing sent."""
    df = pd.DataFrame({"text": ["a"]})
    with NothingSent(sim, df), pytest.raises(ConfigurationError, match="cache=False"):
        df.llm.complete("{text}", **{**opts, "cache": cache})


@pytest.mark.parametrize("output", [None, "", 3])
def test_output_that_is_no_column_name_is_refused(sim, opts, output) -> None:  # type: ignore[no-untyped-def]
    """output=None (or "", 3) is a ConfigurationError before any request."""
    df = pd.DataFrame({"text": ["a"]})
    with NothingSent(sim, df):
        with pytest.raises(ConfigurationError, match="output must be a non-empty column name"):
            df.llm.complete("{text}", output=output, **opts)
        with pytest.raises(ConfigurationError, match="output must be a non-empty column name"):
            df.llm.embed("text", output=output, **opts)


def test_model_that_is_no_name_is_refused(sim, opts) -> None:  # type: ignore[no-untyped-def]
    """model=None is a ConfigurationError before any request (not a 400 on every row)."""
    df = pd.DataFrame({"text": ["a"]})
    with NothingSent(sim, df), pytest.raises(ConfigurationError, match="model must be"):
        df.llm.complete("{text}", model=None, **opts)


def _read_only(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """Make os.access say no for writing in ``folder`` (the tests may run as root)."""
    real = os.access

    def access(path: Any, mode: int, *args: Any, **kwargs: Any) -> bool:
        if mode & os.W_OK and Path(path).resolve().is_relative_to(folder.resolve()):
            return False
        return real(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)


def test_read_only_cache_serves_hits_stores_nothing_and_warns_once(
    sim, opts, tmp_path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """A shared store that cannot be written: its answers are used, nothing is stored, one
    warning naming cache=False; the run's answers are all there."""
    store = tmp_path / "team" / "cache.sqlite"
    df = pd.DataFrame({"text": ["a", "b", "c"]})
    df.iloc[:1].llm.complete("{text}", **{**opts, "cache": store})
    df.iloc[:1].llm.embed("text", **{**opts, "cache": store})
    gc.collect()  # the runs' caches are closed: nothing left to checkpoint
    entries = ResponseCache(store, readonly=True).info()["entries"]
    files = [store, store.with_name(store.name + "-vectors")]
    stamps = [(p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    _read_only(monkeypatch, store.parent)
    before = sim.stats.requests
    with pytest.warns(RuntimeWarning, match="read-only") as caught:
        out = df.llm.complete("{text}", **{**opts, "cache": store})
    assert len(caught) == 1 and "cache=False" in str(caught[0].message)
    assert out["completion"].tolist() == [echo("a"), echo("b"), echo("c")]
    assert out.attrs["dfbatch"]["rows_from_cache"] == 1 and sim.stats.requests == before + 2
    with pytest.warns(RuntimeWarning, match="read-only"):
        vectors = df.llm.embed("text", **{**opts, "cache": store})
    assert vectors["embedding_error"].isna().all()
    assert vectors.attrs["dfbatch"]["rows_from_cache"] == 1
    monkeypatch.undo()
    gc.collect()
    assert ResponseCache(store, readonly=True).info()["entries"] == entries
    assert [(p.stat().st_size, p.stat().st_mtime_ns) for p in files] == stamps


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0,
    reason="root may write read-only files (the os.access test above covers root)",
)
@pytest.mark.parametrize("folder_mode", [0o555, 0o777])
def test_truly_read_only_store_is_read_and_left_as_it_was(sim, opts, tmp_path, folder_mode) -> None:  # type: ignore[no-untyped-def]
    """Files chmod 444 (folder read-only, or not): hits served, no file created or changed."""
    store = tmp_path / "team" / "cache.sqlite"
    df = pd.DataFrame({"text": ["a", "b"]})
    df.iloc[:1].llm.complete("{text}", **{**opts, "cache": store})
    df.iloc[:1].llm.embed("text", **{**opts, "cache": store})
    gc.collect()
    listing = {p.name: p.stat().st_size for p in store.parent.iterdir()}
    for path in store.parent.iterdir():
        path.chmod(0o444)
    store.parent.chmod(folder_mode)
    try:
        with pytest.warns(RuntimeWarning, match="read-only"):
            out = df.llm.complete("{text}", **{**opts, "cache": store})
        assert out["completion"].tolist() == [echo("a"), echo("b")]
        assert out.attrs["dfbatch"]["rows_from_cache"] == 1
        with pytest.warns(RuntimeWarning, match="read-only"):
            vectors = df.llm.embed("text", **{**opts, "cache": store})
        assert vectors["embedding_error"].isna().all()
        assert vectors.attrs["dfbatch"]["rows_from_cache"] == 1
        gc.collect()
        assert {p.name: p.stat().st_size for p in store.parent.iterdir()} == listing
    finally:
        store.parent.chmod(0o755)


def test_cli_read_only_cache_runs_and_warns(sim, tmp_path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    """dfbatch complete --cache on a read-only store: every row answered, a warning, exit 0."""
    store = tmp_path / "team" / "cache.sqlite"
    pd.DataFrame({"text": ["a"]}).llm.complete(
        "{text}", base_url=sim.base_url, progress=False, cache=store
    )
    _read_only(monkeypatch, store.parent)
    source = table(tmp_path / "in.csv", pd.DataFrame({"text": ["a", "b"]}))
    out = tmp_path / "out.parquet"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        status, err = cli("complete", str(source), str(out), "--prompt", "{text}", "--cache",
                          str(store), "--base-url", sim.base_url, capsys=capsys)  # fmt: skip
    assert status == 0 and "read-only" in err and "--no-cache" in err
    assert pq.read_table(out).column("completion").to_pylist() == [echo("a"), echo("b")]


# -- 15. numbers: finite and in range ---------------------------------------------------------

NAN, INF = math.nan, math.inf


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("rpm", NAN),
        ("rpm", INF),
        ("tpm", NAN),
        ("tpm", -1),
        ("timeout", NAN),
        ("timeout", INF),
        ("timeout", 0),
        ("max_attempts", NAN),
        ("max_attempts", 0),
        ("max_attempts", 2.5),
        ("max_attempts", True),
        ("max_in_flight", NAN),
        ("max_in_flight", "10"),
        ("n", NAN),
        ("n", 0),
        ("max_tokens", NAN),
        ("max_tokens", 0),
        ("temperature", NAN),
        ("temperature", 2.5),
        ("temperature", -0.1),
    ],
)
def test_complete_numeric_options_are_finite_and_in_range(sim, opts, option, value) -> None:  # type: ignore[no-untyped-def]
    """NaN, infinities and out-of-range numbers: a ConfigurationError naming the option."""
    df = pd.DataFrame({"text": ["a"]})
    with NothingSent(sim, df), pytest.raises(ConfigurationError, match=f"^{option} must be"):
        df.llm.complete("{text}", **{**opts, option: value})


@pytest.mark.parametrize(
    ("option", "value"),
    [("dimensions", NAN), ("dimensions", 0), ("batch_size", NAN), ("batch_size", 0),
     ("rpm", NAN), ("max_in_flight", 1.5)],
)  # fmt: skip
def test_embed_numeric_options_are_finite_and_in_range(sim, opts, option, value) -> None:  # type: ignore[no-untyped-def]
    """The same for embed's own options."""
    df = pd.DataFrame({"text": ["a"]})
    with NothingSent(sim, df), pytest.raises(ConfigurationError, match=f"^{option} must be"):
        df.llm.embed("text", **{**opts, option: value})


def test_numpy_numbers_are_taken(opts) -> None:  # type: ignore[no-untyped-def]
    """numpy ints and floats are fine values (sent as plain JSON numbers)."""
    out = pd.DataFrame({"text": ["a"]}).llm.complete(
        "{text}", max_tokens=np.int64(5), temperature=np.float32(0.5), n=np.int32(1),
        rpm=np.float64(6000), **opts,
    )  # fmt: skip
    assert out["completion"].tolist() == [echo("a")]


def test_engine_refuses_nan() -> None:
    """Engine(...) itself refuses NaN limits and timeouts."""
    api = ApiConfig.resolve(base_url="http://127.0.0.1:1/v1")
    for option in ("rpm", "tpm", "timeout"):
        with pytest.raises(ConfigurationError, match=f"^{option} must be a finite number"):
            Engine(api, **{option: NAN})


def test_cache_flush_interval_refuses_nan(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """ResponseCache(flush_interval=nan) would never flush on time: refused, nothing created."""
    with pytest.raises(ConfigurationError, match=r"^flush_interval must be a finite number"):
        ResponseCache(tmp_path / "c.sqlite", flush_interval=NAN)
    assert not (tmp_path / "c.sqlite").exists()


@pytest.mark.parametrize(
    "flags",
    [
        ["--tpm", "nan"],
        ["--rpm", "inf"],
        ["--timeout", "nan"],
        ["--temperature", "nan"],
        ["--temperature", "3"],
        ["--max-tokens", "0"],
    ],
)
def test_cli_numeric_flags_refuse_nan(sim, tmp_path, capsys, flags) -> None:  # type: ignore[no-untyped-def]
    """dfbatch complete's number flags: argparse's error (exit 2), naming the flag."""
    source = table(tmp_path / "in.csv", pd.DataFrame({"text": ["a"]}))
    before = sim.stats.requests
    status, err = cli("complete", str(source), str(tmp_path / "o.parquet"), "--prompt",
                      "{text}", "--base-url", sim.base_url, *flags, capsys=capsys)  # fmt: skip
    assert status == 2 and f"argument {flags[0]}" in err and repr(flags[1]) in err
    assert sim.stats.requests == before


def test_cli_run_cookbook_flags_refuse_nan(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    """dfbatch run --max_tokens_per_minute nan: exit 2, naming the flag."""
    status, err = cli("run", str(tmp_path / "r.jsonl"), "--max_tokens_per_minute", "nan",
                      capsys=capsys)  # fmt: skip
    assert status == 2 and "--max_tokens_per_minute" in err and "'nan'" in err


# -- 16. offline without tiktoken's files: skipped, naming TIKTOKEN_CACHE_DIR --------------------


def test_offline_without_tiktoken_files_skips_naming_tiktoken_cache_dir(tmp_path) -> None:
    """With no encoding files and no network, the token tests are skipped (reason names
    TIKTOKEN_CACHE_DIR), collection does not fail, and the others pass."""
    env = {
        **os.environ,
        "TIKTOKEN_CACHE_DIR": str(tmp_path / "empty"),  # no cached files here
        "HTTPS_PROXY": "http://127.0.0.1:9",  # and every download fails at once
        "https_proxy": "http://127.0.0.1:9",
        "NO_PROXY": "",
        "no_proxy": "",
    }
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
         "tests/test_tokens.py", "dfbatch/engine/tokens.py",
         "tests/test_accessor.py::test_too_long_row_fails_alone_or_is_truncated"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    summary = done.stdout.strip().splitlines()[-1]
    assert done.returncode == 0, done.stdout[-3000:]
    assert " passed" in summary and " skipped" in summary and "error" not in summary
    skipped = [line for line in done.stdout.splitlines() if line.startswith("SKIPPED")]
    assert skipped and all("TIKTOKEN_CACHE_DIR" in line for line in skipped)
    assert {line.split()[2].split(":")[0] for line in skipped} == {
        "tests/test_tokens.py",
        "dfbatch/engine/tokens.py",
        "tests/test_accessor.py",
    }


def test_a_prompt_function_that_raises_on_one_row_fails_that_row_alone() -> None:
    """A function of the row that raises for one row gives that row's error; the rest are
    answered and the raising row is not sent."""
    df = pd.DataFrame({"text": ["a", "b", "c"], "n": [1, None, 3]})

    def prompt(row: Any) -> str:
        return f"{row['text']} x{int(row['n'])}"  # int(NaN) raises on the second row

    with Simulator() as sim:
        out = df.llm.complete(prompt, base_url=sim.base_url, api_key="sk-test", progress=False)
        sent = sim.stats.accepted
    assert out["completion"].notna().tolist() == [True, False, True]
    assert (
        out["completion_error"]
        .iloc[1]
        .startswith("invalid prompt: the prompt function raised ValueError")
    )
    assert sent == 2


@pytest.mark.parametrize(
    "option",
    [
        {"budget": float("nan")},
        {"budget": float("inf")},
        {"budget": -1},
        {"price": float("nan")},
        {"price": {"input": 0.1, "output": float("inf")}},
    ],
)
def test_budget_and_price_must_be_finite(option: dict[str, Any]) -> None:
    """A NaN or infinite budget or price would switch the cap off or cost nothing: refused
    before any request, naming the option."""
    df = pd.DataFrame({"text": ["a"]})
    with Simulator() as sim:
        with pytest.raises(ConfigurationError, match=f"{next(iter(option))}"):
            df.llm.embed("text", base_url=sim.base_url, api_key="sk-test", progress=False, **option)
        assert sim.stats.accepted == 0


@pytest.mark.parametrize("flags", [["--budget", "nan"], ["--budget", "inf"], ["--price", "nan"]])
def test_cli_budget_and_price_refuse_nan(flags: list[str], tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """--budget and --price take finite numbers only (exit 2, the flag named, no traceback)."""
    source = tmp_path / "in.jsonl"
    source.write_text('{"model": "text-embedding-3-small", "input": "a"}\n')
    status = main(["run", str(source), "--url", "http://127.0.0.1:9/v1/embeddings", *flags])
    err = capsys.readouterr().err
    assert status == 2 and f"argument {flags[0]}" in err and "Traceback" not in err
