"""A server that echoes the API key (OpenAI's 401 does: "Incorrect API key provided: sk-...";
a broken proxy may echo the whole request) never gets it into anything dfbatch produces: the
error column, a parquet file, ``dfbatch run``'s results, ``dfbatch embed``'s output, a DEBUG
log line, a raised exception. A key no HTTP header can carry is refused before any request."""

from __future__ import annotations

import json
import logging
import traceback

import numpy as np
import pandas as pd
import pytest
from _hostile import HostileApi

import dfbatch  # noqa: F401  (registers .llm)
from dfbatch import ApiConfig, AuthenticationError, ConfigurationError
from dfbatch.cli.main import main
from dfbatch.engine.config import Secret, redact
from dfbatch.engine.core import Engine
from dfbatch.engine.types import Request

KEY = "sk-proj-ECHOED0123456789abcdefSECRET"
TEXTS = ["alpha", "leak one", "beta", "flaky two", "gamma"]
FAILING = [False, True, False, True, False]  # "leak": a 400, "flaky": 500s until max_attempts

pytestmark = pytest.mark.usefixtures("isolated_env")


def assert_clean(*texts: str) -> None:
    for text in texts:
        assert KEY not in text
        assert KEY[8:30] not in text  # not even a fragment


def test_an_echoed_key_is_in_no_error_cell_parquet_file_or_debug_line(tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    """400 and 500 bodies echo the key in every field: the error column says <redacted>, the
    parquet written from the result and the DEBUG log hold no trace of it, other rows answered."""
    caplog.set_level(logging.DEBUG)
    df = pd.DataFrame({"text": TEXTS})
    with HostileApi(key=KEY) as api:
        out = df.llm.embed(
            "text",
            base_url=api.base_url,
            api_key=KEY,
            batch_size=1,
            max_attempts=2,
            cache=tmp_path / "cache.sqlite",
            progress=False,
        )
    errors = out["embedding_error"]
    assert errors.notna().tolist() == FAILING
    assert np.array_equal(out["embedding"].iloc[0][:4], [5.0, 1.0, 2.0, 3.0])  # "alpha" answered
    assert errors.iloc[1].startswith("HTTP 400 <redacted>: Invalid 'input'")
    assert "'Authorization: Bearer <redacted>' (<redacted>)" in errors.iloc[1]
    assert "(request id req_<redacted>)" in errors.iloc[1]
    assert errors.iloc[3] == "HTTP 500: The server had an error for key <redacted>"
    assert any("retrying" in r.getMessage() for r in caplog.records)  # DEBUG lines were there
    out.to_parquet(tmp_path / "out.parquet")
    assert_clean(out.to_string(), repr(out.attrs), caplog.text)
    assert_clean(*(r.getMessage() for r in caplog.records))
    for path in tmp_path.iterdir():  # the parquet file, the cache and its vectors file
        assert KEY.encode() not in path.read_bytes(), path.name


def test_a_401_that_echoes_the_key_raises_without_it(caplog) -> None:  # type: ignore[no-untyped-def]
    """The refused key is in OpenAI's 401 message: not in the exception's str, repr, traceback
    or ``.error``, nor in the log."""
    caplog.set_level(logging.DEBUG)
    df = pd.DataFrame({"text": TEXTS})
    with HostileApi(key="sk-the-right-one-0000") as api:
        with pytest.raises(AuthenticationError) as refused:
            df.llm.embed("text", base_url=api.base_url, api_key=KEY, cache=False, progress=False)
        assert len(api.requests) == 1  # a refused key costs one request
    exc = refused.value
    assert "Incorrect API key provided: <redacted>. You can find" in str(exc)
    assert exc.error.status == 401 and exc.error.code == "invalid_api_key"
    assert_clean(
        str(exc), repr(exc), str(exc.error), repr(exc.error), json.dumps(exc.error.to_dict())
    )
    assert_clean(*traceback.format_exception(exc), caplog.text)


def test_dfbatch_run_results_hold_no_echoed_key(tmp_path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    """The cookbook's results file and summary: each failed line's error is there, the key is
    not."""
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    requests = tmp_path / "requests.jsonl"
    lines = [{"model": "text-embedding-3-small", "input": t} for t in TEXTS]
    requests.write_text("".join(json.dumps(line) + "\n" for line in lines))
    save = tmp_path / "results.jsonl"
    with HostileApi(key=KEY) as api:
        status = main([
            "run", str(requests), "--save_filepath", str(save), "--no-cache",
            "--request_url", api.base_url + "/embeddings", "--max_attempts", "2",
        ])  # fmt: skip
    assert status == 1  # some lines failed
    rows = [json.loads(line) for line in save.read_text().splitlines()]
    assert [isinstance(row[1], list) for row in rows] == FAILING  # [request, [error]] on failure
    assert rows[0][1]["data"][0]["embedding"][:4] == [5.0, 1.0, 2.0, 3.0]
    assert rows[1][1][0]["code"] == "<redacted>" and rows[1][1][0]["status"] == 400
    assert_clean(save.read_text(), *capsys.readouterr())


def test_dfbatch_embed_output_holds_no_echoed_key(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    """``dfbatch embed``'s parquet and summary: the failed rows' errors say <redacted>, other
    rows answered."""
    source, out = tmp_path / "in.parquet", tmp_path / "out.parquet"
    pd.DataFrame({"text": TEXTS}).to_parquet(source)
    with HostileApi(key=KEY) as api:
        status = main([
            "embed", str(source), str(out), "--column", "text", "--base-url", api.base_url,
            "--api-key", KEY, "--batch-size", "1", "--max-attempts", "2", "--no-cache",
        ])  # fmt: skip
    assert status == 1
    got = pd.read_parquet(out)
    assert got["embedding_error"].notna().tolist() == FAILING
    assert "<redacted>" in got["embedding_error"].iloc[1]
    assert got["embedding"].iloc[4].tolist()[:4] == [5.0, 1.0, 2.0, 3.0]
    assert KEY.encode() not in out.read_bytes()
    assert_clean(*capsys.readouterr())


@pytest.mark.parametrize(
    ("key", "named"),
    [
        ("sk-proj-ECHOED0123456789abcdefSECRET\u2026", "U+2026"),  # pasted with an ellipsis
        ("\u201csk-proj-ECHOED0123456789abcdefSECRET\u201d", "U+201C"),  # typographic quotes
        ("sk-proj-ECHOED0123456789abcdefSECRET\n", "U+000A"),  # read from a file, newline kept
    ],
    ids=["ellipsis", "quotes", "newline"],
)
def test_a_key_no_header_can_carry_is_refused_before_any_request(key: str, named: str) -> None:
    """A configuration error that names the character, never the key, and sends nothing."""
    df = pd.DataFrame({"text": TEXTS})
    with HostileApi() as api:
        with pytest.raises(ConfigurationError, match="API key holds a character") as caught:
            df.llm.embed("text", base_url=api.base_url, api_key=key, cache=False, progress=False)
        assert api.requests == []
    exc = caught.value
    assert named in str(exc)
    assert exc.__context__ is None and exc.__cause__ is None  # no codec error holding headers
    assert_clean(str(exc), repr(exc), *traceback.format_exception(exc))


def test_the_lean_transport_refuses_a_header_it_cannot_encode_without_echoing_it() -> None:
    """An ApiConfig built around ``resolve`` still never raises a codec error whose repr holds
    every header: the transport names the header and sends nothing."""
    api = ApiConfig(base_url="http://127.0.0.1:9/v1", api_key=Secret(KEY + "\u2019"))

    async def main_() -> None:
        await Engine(api, max_attempts=1).run([Request(0, "/embeddings", {"input": "x"})], print)

    import asyncio

    with pytest.raises(ConfigurationError, match="'Authorization' header holds a character") as c:
        asyncio.run(main_())
    assert c.value.__context__ is None
    assert_clean(str(c.value), repr(c.value), *traceback.format_exception(c.value))


def test_redact_takes_out_secrets_and_bearer_tokens() -> None:
    """The key anywhere, any Bearer token, and nothing else (not "Bearer auth")."""
    assert redact(f"key {KEY}, again {KEY}", [KEY]) == "key <redacted>, again <redacted>"
    assert (
        redact("Authorization: Bearer eyJhbGciOi.x-y_z", []) == "Authorization: Bearer <redacted>"
    )
    assert redact("use Bearer auth", []) == "use Bearer auth"
    assert redact("x", ["x"]) == "x"  # too short to be a key: never searched for
    once = redact(f"Bearer {KEY}", [KEY])
    assert redact(once, [KEY]) == once == "Bearer <redacted>"
    azure = ApiConfig.resolve(
        base_url="http://127.0.0.1:9/v1", headers={"Authorization": "Bearer tok-extra-0123456"}
    )
    assert "tok-extra-0123456" in azure.secrets()  # a credential among extra headers
