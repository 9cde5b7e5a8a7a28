"""``dfbatch embed`` / ``complete`` (table file in, parquet out) and ``dfbatch cache``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import dfbatch  # noqa: F401  (registers df.llm)
from dfbatch.cli.main import main
from dfbatch.testing import Simulator

# A cache of its own per test, and no key or base URL from the environment.
pytestmark = pytest.mark.usefixtures("isolated_env")


@pytest.fixture(scope="module")
def sim():  # type: ignore[no-untyped-def]
    with Simulator(record_inputs=True) as s:
        yield s


def frame(n: int = 30) -> pd.DataFrame:
    texts = [f"review {i}: {'great' if i % 2 else 'meh'}" for i in range(n)]
    texts[4] = texts[2]  # a repeated text
    return pd.DataFrame({"id": np.arange(n, dtype=np.int64) * 10, "text": texts})


def write(df: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".parquet":
        df.to_parquet(path, index=False)
    elif path.suffix == ".csv":
        df.to_csv(path, index=False)
    else:
        df.to_json(path, orient="records", lines=True)
    return path


def read_back(path: Path) -> pd.DataFrame:
    return {".parquet": pd.read_parquet, ".csv": pd.read_csv}.get(
        path.suffix, lambda p: pd.read_json(p, lines=True)
    )(path)


def assert_same(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert list(got.columns) == list(want.columns)
    for name in want.columns:
        for a, b in zip(got[name], want[name], strict=True):
            if isinstance(b, np.ndarray):
                assert a.dtype == np.float32 and np.array_equal(a, b)
            else:
                assert (pd.isna(a) and pd.isna(b)) or a == b, (name, a, b)


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_embed_gives_the_accessors_columns(sim, tmp_path, suffix) -> None:  # type: ignore[no-untyped-def]
    """Parquet, CSV or JSONL in: OUT holds IN's columns plus df.llm.embed's, vectors float32."""
    source = write(frame(), tmp_path / f"in{suffix}")
    out = tmp_path / "out.parquet"
    assert main(["embed", str(source), str(out), "--column", "text", "--dimensions", "32",
                 "--base-url", sim.base_url]) == 0  # fmt: skip
    want = read_back(source).llm.embed(
        "text", dimensions=32, base_url=sim.base_url, progress=False, cache=False
    )
    assert_same(pd.read_parquet(out), want)
    assert pq.read_schema(out).field("embedding").type == pa.list_(pa.float32())


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_complete_gives_the_accessors_columns(sim, tmp_path, suffix) -> None:  # type: ignore[no-untyped-def]
    """A prompt template over IN's columns: the same completion column as df.llm.complete."""
    source = write(frame(12), tmp_path / f"in{suffix}")
    out = tmp_path / "out.parquet"
    args = ["--prompt", "Say {text} ({id})", "--max-tokens", "20", "--system", "Be brief."]
    assert main(["complete", str(source), str(out), *args, "--base-url", sim.base_url]) == 0
    want = read_back(source).llm.complete(
        "Say {text} ({id})", max_tokens=20, system="Be brief.", base_url=sim.base_url,
        progress=False, cache=False,
    )  # fmt: skip
    assert_same(pd.read_parquet(out), want)


def test_expand_writes_one_typed_column_per_schema_property(sim, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """--json-schema with --expand: a column per property, typed from the schema."""
    schema = {"type": "object", "properties": {"label": {"type": "string"},
              "score": {"type": "integer"}}, "required": ["label", "score"]}  # fmt: skip
    schema_file = tmp_path / "schema.json"
    schema_file.write_text(json.dumps(schema))
    source = write(frame(6), tmp_path / "in.parquet")
    out = tmp_path / "out.parquet"
    assert main(["complete", str(source), str(out), "--prompt", "Rate {text}", "--json-schema",
                 str(schema_file), "--expand", "--base-url", sim.base_url]) == 0  # fmt: skip
    table = pq.read_table(out)
    assert table.schema.field("label").type == pa.string()
    assert table.schema.field("score").type == pa.int64()
    assert table.column("completion_error").null_count == 6


def test_a_chunked_run_equals_an_unchunked_one(sim, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """--chunk-size 7 over 30 rows writes the same table as one chunk does."""
    source = write(frame(), tmp_path / "in.csv")
    whole, chunked = tmp_path / "whole.parquet", tmp_path / "chunked.parquet"
    base = ["embed", str(source), "--column", "text", "--base-url", sim.base_url, "--no-cache"]
    assert main([*base, str(whole)]) == 0
    assert main([*base, str(chunked), "--chunk-size", "7"]) == 0
    assert pq.ParquetFile(chunked).metadata.num_row_groups == 5
    assert pq.read_table(chunked).equals(pq.read_table(whole))


def test_rerun_on_a_finished_output_sends_nothing(sim, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    """The same command again: 'nothing to do', no request, OUT untouched."""
    source = write(frame(), tmp_path / "in.parquet")
    out = tmp_path / "out.parquet"
    cmd = ["embed", str(source), str(out), "--column", "text", "--base-url", sim.base_url]
    assert main(cmd) == 0
    before, kept = sim.stats.requests, out.read_bytes()
    capsys.readouterr()
    assert main(cmd) == 0
    assert "nothing to do" in capsys.readouterr().err
    assert sim.stats.requests == before and out.read_bytes() == kept
    assert main([*cmd[:-2], "--column", "id"]) == 2  # other options: refused without --overwrite
    assert "--overwrite" in capsys.readouterr().err


def test_rerun_after_a_kill_sends_no_request_for_rows_answered_before(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """SIGKILL after two chunks, then rerun: their rows come from the cache, not the server."""
    n, chunk = 400, 50
    df = pd.DataFrame({"text": [f"row {i}" for i in range(n)]})
    source = write(df, tmp_path / "in.parquet")
    out = tmp_path / "out.parquet"
    env = {**os.environ, "DFBATCH_CACHE_DIR": str(tmp_path / "cache")}
    with Simulator(latency=0.15, record_inputs=True) as sim:
        cmd = ["embed", str(source), str(out), "--column", "text", "--chunk-size", str(chunk),
               "--batch-size", "10", "--base-url", sim.base_url, "--no-progress"]  # fmt: skip
        proc = subprocess.Popen(
            [sys.executable, "-m", "dfbatch", *cmd], env=env, stderr=subprocess.PIPE, text=True
        )
        assert proc.stderr is not None
        for line in proc.stderr:  # the log says when a chunk starts
            if "chunk 4 of 8" in line:
                break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
        assert not out.exists()
        first = dict(sim.stats.inputs)
        assert main(cmd) == 0
    answered_twice = {t for t, c in sim.stats.inputs.items() if c > 1}
    assert all(first.get(t, 0) <= 1 for t in sim.stats.inputs)
    assert 3 * chunk <= len(first) < n and answered_twice <= set(first)
    assert len(answered_twice) <= chunk  # at most the chunk in flight at the kill
    got = pd.read_parquet(out)
    assert len(got) == n and got["embedding_error"].isna().all()


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("column", "has no column 'txt' (its columns: 'id', 'text')"),
        ("missing", "no such input file"),
        ("empty", "is empty"),
        ("unwritable", "cannot write"),
        ("format", "--format"),
    ],
)
def test_bad_table_arguments_say_what_is_wrong(sim, tmp_path, capsys, case, message) -> None:  # type: ignore[no-untyped-def]
    """A CSV without the column, a missing or empty file, an unwritable OUT: exit 2, one line."""
    source = write(frame(5), tmp_path / "in.csv")
    out = tmp_path / "out.parquet"
    column = "txt" if case == "column" else "text"
    if case == "missing":
        source = tmp_path / "nope.csv"
    elif case == "empty":
        source.write_text("")
    elif case == "unwritable":
        out = tmp_path / "no" / "dir" / "out.parquet"
    elif case == "format":
        source = source.rename(tmp_path / "in.data")
    before = sim.stats.requests
    assert main(["embed", str(source), str(out), "--column", column,
                 "--base-url", sim.base_url]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert message in err and err.startswith("dfbatch embed: error:") and "\n" not in err
    assert sim.stats.requests == before and not out.exists()
    assert not out.with_name(out.name + ".partial").exists()


def test_cache_info_and_clear(sim, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    """info shows entries by model; clear --model / --older-than / all delete what they say."""
    cache = tmp_path / "c.sqlite"
    source = write(frame(10), tmp_path / "in.parquet")
    common = ["--base-url", sim.base_url, "--cache", str(cache)]
    assert (
        main(["embed", str(source), str(tmp_path / "e.parquet"), "--column", "text", *common]) == 0
    )
    assert main(["complete", str(source), str(tmp_path / "c.parquet"), "--prompt", "{text}",
                 *common]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["cache", "info", "--cache", str(cache), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["by_model"] == {"text-embedding-3-small": 9, "gpt-4o-mini": 9}
    assert main(["cache", "info", "--cache", str(cache)]) == 0
    assert "entries: 18" in capsys.readouterr().out
    assert main(["cache", "clear", "--older-than", "7d", "--cache", str(cache)]) == 0
    assert "deleted 0 entries older than 7d" in capsys.readouterr().out
    assert main(["cache", "clear", "--model", "gpt-4o-mini", "--cache", str(cache)]) == 0
    assert "deleted 9 entries of model 'gpt-4o-mini'" in capsys.readouterr().out
    assert main(["cache", "clear", "--cache", str(cache)]) == 0
    assert "deleted 9 entries" in capsys.readouterr().out
    assert main(["cache", "clear", "--older-than", "soon", "--cache", str(cache)]) == 2
    assert "cannot read 'soon' as an age" in capsys.readouterr().err


def test_cache_info_on_a_missing_store_creates_nothing(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    """info on a path with no store says so (0 entries) and does not create the file."""
    path = tmp_path / "none" / "cache.sqlite"
    assert main(["cache", "info", "--cache", str(path)]) == 0
    assert "not created yet" in capsys.readouterr().out and not path.exists()


def test_embed_progress_logs_each_chunk(sim, tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    """A chunked run says which rows each chunk covers (the bar is per chunk)."""
    source = write(frame(20), tmp_path / "in.parquet")
    with caplog.at_level("INFO"):
        assert main(["embed", str(source), str(tmp_path / "o.parquet"), "--column", "text",
                     "--chunk-size", "8", "--base-url", sim.base_url]) == 0  # fmt: skip
    assert "chunk 3 of 3: rows 16 to 19" in caplog.text
