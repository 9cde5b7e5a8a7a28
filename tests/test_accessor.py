"""df.llm end to end against the built-in simulator: every answer on its own row."""

from __future__ import annotations

import asyncio
import json
import re

import numpy as np
import pandas as pd
import pytest

import dfbatch
from dfbatch import ConfigurationError, RowsFailedError
from dfbatch.testing import Faults, Simulator, expected_content, expected_embedding


@pytest.fixture(scope="module")
def sim():  # type: ignore[no-untyped-def]
    with Simulator(record_inputs=True, shuffle_data=True) as s:
        yield s


def vec(text: str, dims: int | None = None) -> np.ndarray:
    return expected_embedding(text, model="text-embedding-3-small", dimensions=dims)


def test_embed_puts_each_vector_on_its_row(opts) -> None:  # type: ignore[no-untyped-def]
    """200 rows packed into requests come back float32, each equal to its own text's vector."""
    df = pd.DataFrame(
        {"text": [f"row {i}" for i in range(200)]}, index=pd.Index(range(1000, 800, -1), name="id")
    )
    out = df.llm.embed("text", batch_size=16, **opts)
    assert out.index.equals(df.index) and list(df.columns) == ["text"]
    for text, v in zip(out["text"], out["embedding"], strict=True):
        assert v.dtype == np.float32 and np.array_equal(v, vec(text))
    assert out["embedding_error"].isna().all()
    assert out.attrs["dfbatch"]["requests"] == 13


def test_bad_cells_fail_alone(opts) -> None:  # type: ignore[no-untyped-def]
    """NA, None, empty and non-string cells get NA without a request; other rows are intact."""
    df = pd.DataFrame({"text": ["a", None, "", 5, np.nan, pd.NA, "b"]})
    out = df.llm.embed("text", **opts)
    assert np.array_equal(out["embedding"][0], vec("a"))
    assert np.array_equal(out["embedding"][6], vec("b"))
    assert out["embedding"][1:6].isna().all()
    errs = out["embedding_error"].tolist()
    assert errs[0] is None and errs[6] is None and errs[1] is None
    assert "empty" in errs[2] and "not a string" in errs[3]


@pytest.mark.needs_tiktoken
def test_too_long_row_fails_alone_or_is_truncated(opts) -> None:  # type: ignore[no-untyped-def]
    """A 10,000-token row fails with a clear error, or is truncated when truncate=True."""
    long = "word " * 10_000
    df = pd.DataFrame({"text": ["short", long, "also short"]})
    out = df.llm.embed("text", **opts)
    assert re.search(r"10,\d{3} tokens", out["embedding_error"][1])
    assert "truncate=True" in out["embedding_error"][1]
    assert out["embedding"][1] is None
    assert np.array_equal(out["embedding"][2], vec("also short"))
    cut = df.llm.embed("text", truncate=True, **opts)
    assert cut["embedding_error"].isna().all() and cut["embedding"][1].shape == (1536,)


def test_index_kept_duplicates_multiindex(opts) -> None:  # type: ignore[no-untyped-def]
    """Duplicate labels and a MultiIndex are kept exactly; answers land by position."""
    idx = pd.MultiIndex.from_tuples([("b", 2), ("a", 1), ("b", 2), ("a", 1)])
    df = pd.DataFrame({"text": ["x", "y", "z", "x"]}, index=idx)
    out = df.llm.embed("text", **opts)
    assert out.index.equals(idx)
    assert [
        np.array_equal(v, vec(t)) for t, v in zip(df["text"], out["embedding"], strict=True)
    ] == [True] * 4


def test_caller_frame_untouched(opts) -> None:  # type: ignore[no-untyped-def]
    """The caller's frame keeps its columns and values."""
    df = pd.DataFrame({"text": ["x", "y"]})
    before = df.copy()
    df.llm.embed("text", **opts)
    df.llm.complete("Say {text}", **opts)
    pd.testing.assert_frame_equal(df, before)


def test_dimensions_and_usage(opts) -> None:  # type: ignore[no-untyped-def]
    """dimensions= is passed through; usage=True adds per-row token counts."""
    out = pd.DataFrame({"text": ["hello world"]}).llm.embed(
        "text", dimensions=64, usage=True, **opts
    )
    assert np.array_equal(out["embedding"][0], vec("hello world", 64))
    assert out["embedding_tokens"][0] > 0


def test_missing_column_fails_before_any_request(sim, opts) -> None:  # type: ignore[no-untyped-def]
    """A template naming a missing column raises at once, naming it, with nothing sent."""
    before = sim.stats.requests
    df = pd.DataFrame({"text": ["x"]})
    with pytest.raises(ConfigurationError, match="'txt'"):
        df.llm.complete("Summarize {txt}", **opts)
    with pytest.raises(ConfigurationError, match="no column 'body'"):
        df.llm.embed("body", **opts)
    assert sim.stats.requests == before


def test_complete_template_row_order(opts) -> None:  # type: ignore[no-untyped-def]
    """Each row gets the answer to its own prompt; NA fields are not sent."""
    df = pd.DataFrame({"a": ["x", "y", None, "w"], "b": [1, 2, 3, 4]}, index=[9, 9, 3, 1])
    out = df.llm.complete("Say {a} {b}", system="be brief", **opts)
    for a, b, got in zip(df["a"], df["b"], out["completion"], strict=True):
        if pd.isna(a):
            assert got is None
        else:
            body = {
                "messages": [
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": f"Say {a} {b}"},
                ]
            }
            assert got == expected_content(body)


def test_complete_callable_and_messages(opts) -> None:  # type: ignore[no-untyped-def]
    """A prompt function may return text or a messages list; row.attr and row['x'] work."""
    df = pd.DataFrame({"q": ["one", "two"]})
    out = df.llm.complete(lambda r: f"Q: {r.q}", **opts)
    assert out["completion"].tolist() == ["echo: Q: one", "echo: Q: two"]
    out = df.llm.complete(lambda r: [{"role": "user", "content": r["q"]}], **opts)
    assert out["completion"].tolist() == ["echo: one", "echo: two"]


SCHEMA = {
    "type": "object",
    "properties": {"label": {"type": "string"}, "score": {"type": "integer"}},
    "required": ["label", "score"],
}


def test_json_schema_parsed_expanded_and_invalid_json_is_a_row_error(opts) -> None:  # type: ignore[no-untyped-def]
    """JSON answers are parsed; expand=True gives a column per field; bad JSON fails alone."""
    df = pd.DataFrame({"t": ["good", "bad [[invalid-json]]", "fine"]})
    out = df.llm.complete("{t}", response_format=SCHEMA, **opts)
    assert isinstance(out["completion"][0], dict) and set(out["completion"][0]) == {
        "label",
        "score",
    }
    assert out["completion"][1] is None and "invalid JSON" in out["completion_error"][1]
    assert isinstance(out["completion"][2], dict)
    wide = df.llm.complete("{t}", response_format=SCHEMA, expand=True, **opts)
    assert {"label", "score", "completion_error"} <= set(wide.columns)
    assert wide["score"][0] == len("good")


def test_pydantic_response_format(opts) -> None:  # type: ignore[no-untyped-def]
    """A pydantic model class becomes a strict json_schema and validates each answer."""
    pydantic = pytest.importorskip("pydantic")

    class Review(pydantic.BaseModel):
        label: str
        score: int

    out = pd.DataFrame({"t": ["nice"]}).llm.complete("{t}", response_format=Review, **opts)
    assert out["completion"][0]["score"] == 4


def test_n_gives_lists(opts) -> None:  # type: ignore[no-untyped-def]
    """n=3 gives a list of three answers per row."""
    out = pd.DataFrame({"t": ["hi"]}).llm.complete("{t}", n=3, **opts)
    assert isinstance(out["completion"][0], list) and len(out["completion"][0]) == 3


def test_errors_raise_keeps_the_result(opts) -> None:  # type: ignore[no-untyped-def]
    """errors='raise' raises after the run, with the finished rows in .result."""
    df = pd.DataFrame({"text": ["ok", ""]})
    with pytest.raises(RowsFailedError) as info:
        df.llm.embed("text", errors="raise", **opts)
    assert info.value.failed == 1
    assert np.array_equal(info.value.result["embedding"][0], vec("ok"))


def test_series_accessor(opts) -> None:  # type: ignore[no-untyped-def]
    """series.llm.embed() and series.llm.complete('... {} ...') work like the frame's."""
    s = pd.Series(["p", "q"], name="word", index=["i", "j"])
    out = s.llm.embed(**opts)
    assert list(out.columns) == ["word", "embedding", "embedding_error"]
    assert np.array_equal(out.loc["j", "embedding"], vec("q"))
    out = s.llm.complete("Define {}", **opts)
    assert out["completion"].tolist() == ["echo: Define p", "echo: Define q"]


def test_parquet_round_trip_keeps_float32(opts, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The embedding column survives to_parquet/read_parquet with the same float32 values."""
    out = pd.DataFrame({"text": ["a", "b", None]}).llm.embed("text", **opts)
    path = tmp_path / "e.parquet"
    out.to_parquet(path)
    back = pd.read_parquet(path)
    for a, b in zip(out["embedding"], back["embedding"], strict=True):
        if a is None:
            assert b is None
        else:
            assert b.dtype == np.float32 and np.array_equal(a, b)


def test_async_twin_and_inside_a_running_loop(opts) -> None:  # type: ignore[no-untyped-def]
    """aembed works with await; embed works inside a running loop (as in Jupyter)."""
    df = pd.DataFrame({"text": ["a"]})

    async def main():  # type: ignore[no-untyped-def]
        first = await df.llm.aembed("text", **opts)
        second = df.llm.embed("text", **opts)  # a loop is running here, as in a notebook
        return first, second

    first, second = asyncio.run(main())
    assert np.array_equal(first["embedding"][0], second["embedding"][0])


def test_rerun_is_served_from_cache(sim, opts) -> None:  # type: ignore[no-untyped-def]
    """Running the same cell twice sends nothing the second time."""
    df = pd.DataFrame({"text": [f"cached {i}" for i in range(50)]})
    df.llm.embed("text", **opts)
    df.llm.complete("Hi {text}", **opts)
    before = sim.stats.requests
    again = df.llm.embed("text", **opts)
    df.llm.complete("Hi {text}", **opts)
    assert sim.stats.requests == before
    assert again.attrs["dfbatch"]["rows_from_cache"] == 50


def test_accessor_rejects_bad_options(opts) -> None:  # type: ignore[no-untyped-def]
    """Bad options fail at once with a message that says what to change."""
    df = pd.DataFrame({"text": ["a"]})
    with pytest.raises(ConfigurationError, match="errors must be"):
        df.llm.embed("text", errors="ignore", **opts)
    with pytest.raises(ConfigurationError, match="batch_size"):
        df.llm.embed("text", batch_size=0, **opts)
    with pytest.raises(ConfigurationError, match="expand=True"):
        df.llm.complete("{text}", expand=True, **opts)


def test_public_api_is_curated() -> None:
    """dfbatch.__all__ lists exactly the public names, all importable."""
    for name in dfbatch.__all__:
        assert hasattr(dfbatch, name)
    assert json.dumps(sorted(dfbatch.__all__))


@pytest.mark.parametrize(
    ("server", "exc", "cause"),
    [
        ({"api_key": "sk-the-right-one"}, dfbatch.AuthenticationError, "API key"),
        ({"quota_exhausted": True}, dfbatch.QuotaExceededError, "quota"),
    ],
)
def test_run_level_errors_stop_the_run_within_five_requests(server, exc, cause) -> None:  # type: ignore[no-untyped-def]
    """A refused key or an empty quota stops a 5,000-row run after at most 5 requests."""
    df = pd.DataFrame({"text": [f"row {i}" for i in range(5000)]})
    with Simulator(**server) as s:
        with pytest.raises(exc, match=cause) as info:
            df.llm.complete(
                "{text}",
                base_url=s.base_url,
                api_key="sk-wrong",
                rpm=1e6,
                cache=False,
                progress=False,
            )
        assert s.stats.requests <= 5
    assert "Fix:" in str(info.value)


def test_summary_groups_failed_rows_by_cause(opts) -> None:  # type: ignore[no-untyped-def]
    """The figures count failed rows by cause, and NA rows as not sent (not ok, not failed)."""
    df = pd.DataFrame({"text": ["fine", "", "", 3, None]})
    out = df.llm.embed("text", **opts)
    figures = out.attrs["dfbatch"]
    assert figures["rows_failed"] == 3 and figures["rows_not_sent"] == 1
    assert figures["failures_by_cause"] == {"invalid input": 3}


def test_truncated_answer_is_not_cached_as_the_full_texts(opts) -> None:  # type: ignore[no-untyped-def]
    """A vector of a cut text is never served later for the uncut text."""
    df = pd.DataFrame({"text": ["word " * 9_000]})
    assert df.llm.embed("text", truncate=True, **opts)["embedding_error"].isna().all()
    again = df.llm.embed("text", **opts)
    assert "input too long" in again["embedding_error"][0]


def test_fault_mix_end_to_end_every_row_answered_once(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """5% 5xx, 1% resets, 1% non-JSON 200s, 0.5% hangs on the real simulator: every row ends
    answered with its own answer, and the server answered each prompt exactly once."""
    faults = Faults(error_5xx=0.05, reset=0.01, non_json=0.01, hang=0.005)
    df = pd.DataFrame({"text": [f"row {i}" for i in range(1000)]})
    with Simulator(faults=faults, hang_seconds=30, record_inputs=True, seed=11) as s:
        out = df.llm.complete(
            "{text}", base_url=s.base_url, timeout=1.0, cache=False, progress=False
        )
        assert sum(s.stats.faults.values()) > 50
        assert set(s.stats.inputs.values()) == {1} and len(s.stats.inputs) == 1000
    assert out["completion_error"].isna().all()
    assert out["completion"].tolist() == [f"echo: row {i}" for i in range(1000)]
    assert out.attrs["dfbatch"]["retries"] > 50
