"""Issue 9: every answer a server can send is a success or that request's error, never a crash.

A bad answer (JSON nested 1,000 deep, a usage that is not a count, vectors that are not flat
lists of finite numbers of the length asked, a chat answer with no content, a refusal) is the
error of the rows it answers: the other rows are answered, the call returns its frame, the CLI
writes every line and exits 1, and the bad answer is never counted or cached, so a rerun
against a healthy server gets the right answer. A text that cannot be sent fails alone.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from _vtime import run_virtual

import dfbatch  # noqa: F401  (registers the accessor)
from dfbatch.cli.main import main
from dfbatch.engine.answers import answer_check, check_embeddings
from dfbatch.engine.retry import Action, InvalidAnswer, classify_response, json_too_deep
from dfbatch.engine.transport import MockTransport, RawResponse
from dfbatch.testing import Simulator, expected_content, expected_embedding

SMALL = "text-embedding-3-small"
pytestmark = pytest.mark.usefixtures("isolated_env")

Answer = Callable[[dict[str, Any]], Any]  # request body -> JSON value or raw bytes (None: good)


def b64(vector: np.ndarray) -> str:
    return base64.b64encode(np.asarray(vector, "<f4").tobytes()).decode()


def good_embeddings(req: dict[str, Any]) -> dict[str, Any]:
    """What the simulator answers: each input's expected vector, base64 when asked."""
    model, dims = req.get("model", SMALL), req.get("dimensions")
    encode = b64 if req.get("encoding_format") == "base64" else (lambda v: v.tolist())
    data = [
        {"object": "embedding", "index": i, "embedding": encode(vec(t, dims, model))}
        for i, t in enumerate(req["input"])
    ]
    return {"object": "list", "data": data, "usage": {"prompt_tokens": 2, "total_tokens": 2}}


def good_chat(req: dict[str, Any]) -> dict[str, Any]:
    return {
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": expected_content(req)},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
    }


def vec(text: str, dims: int | None = None, model: str = SMALL) -> np.ndarray:
    return expected_embedding(text, model=model, dimensions=dims)


def with_vectors(req: dict[str, Any], vector: Callable[[int], Any]) -> dict[str, Any]:
    """A well-formed embeddings answer whose item ``i`` carries ``vector(i)``."""
    body = good_embeddings(req)
    for i, item in enumerate(body["data"]):
        item["embedding"] = vector(i)
    return body


class Server:
    """A mock transport answering each request with ``bad(body)`` or, when that is None, the
    good answer; it counts the requests and the inputs it saw."""

    def __init__(self, bad: Answer) -> None:
        self.bad = bad
        self.requests = 0
        self.inputs: list[str] = []
        self.transport = MockTransport(self.handle)

    async def handle(self, url: str, headers: Any, body: bytes) -> RawResponse:
        req = json.loads(body)
        self.requests += 1
        self.inputs += req["input"] if "input" in req else [req["messages"][-1]["content"]]
        answer = self.bad(req)
        if answer is None:
            answer = good_embeddings(req) if url.endswith("/embeddings") else good_chat(req)
        data = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
        return RawResponse(200, {"content-type": "application/json"}, data)


def options(server: Server, cache: Any = False, **extra: Any) -> dict[str, Any]:
    return {
        "base_url": "http://bad.test/v1",
        "api_key": "sk-test",
        "transport": server.transport,
        "progress": False,
        "cache": cache,
        **extra,
    }


def when_input(text: str, answer: Answer) -> Answer:
    """``answer`` for the requests that carry ``text``, the good answer for the others."""

    def bad(req: dict[str, Any]) -> Any:
        inputs = req.get("input") or [m["content"] for m in req.get("messages", [])]
        return answer(req) if text in inputs else None

    return bad


def deep(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


ROWS = pd.DataFrame({"text": ["a", "b", "BAD", "c", "d"]}, index=[10, 11, 12, 13, 14])


def assert_only_bad_rows_failed(out: pd.DataFrame, bad: set[int], message: str) -> None:
    """The rows of ``bad`` (positions) carry ``message`` and NA; every other row its vector."""
    assert out.index.equals(ROWS.index)
    for pos, (text, v, err) in enumerate(
        zip(out["text"], out["embedding"], out["embedding_error"], strict=True)
    ):
        if pos in bad:
            assert v is None and message in err, (pos, err)
        else:
            assert err is None and np.array_equal(v, vec(text)), (pos, err)


# -- 7. nothing a server sends ends the call ---------------------------------------------------


@pytest.mark.parametrize("levels", [65, 999, 1000, 100_000])
def test_json_nested_deep_fails_the_rows_of_that_answer_only(levels: int) -> None:
    """JSON nested 65 to 100,000 deep (RecursionError before): those rows' error, others kept."""
    server = Server(when_input("BAD", lambda req: deep(levels)))
    out = ROWS.llm.embed("text", batch_size=2, max_attempts=1, **options(server))
    assert_only_bad_rows_failed(out, {2, 3}, "JSON nested deeper than 64 levels")
    assert out.attrs["dfbatch"]["requests_failed"] == 1


@pytest.mark.parametrize("total", ["lots", -1, 1.5, True, 10**12, [1], {"n": 1}])
def test_usage_that_is_not_a_token_count_is_that_requests_error(total: Any) -> None:
    """usage.total_tokens "lots" (ValueError before), negative, huge...: an error, not counted."""

    def bad(req: dict[str, Any]) -> Any:
        return {**good_embeddings(req), "usage": {"total_tokens": total}}

    server = Server(when_input("BAD", bad))
    out = ROWS.llm.embed("text", batch_size=2, max_attempts=1, **options(server))
    assert_only_bad_rows_failed(out, {2, 3}, "usage.total_tokens is not a token count")
    assert out.attrs["dfbatch"]["tokens_used"] == 2 * 2  # the two good answers only


@pytest.mark.parametrize(
    ("vector", "message"),
    [
        ([[1.0, 2.0]], "not a list of numbers (Expected `float`, got `array`"),
        ([{"a": 1}], "not a list of numbers"),
        (["1.5"], "not a list of numbers"),
        ([True], "not a list of numbers"),
        ([None], "not a list of numbers"),
        ([10**400], "not a list of numbers (Number out of range"),
        ({"x": 1}, "embedding of unexpected type dict"),
        (None, "embedding of unexpected type null"),
        ("not base64!", "an embedding is not base64 (Invalid number of data characters)"),
        ("AAAA\u00e9", "an embedding is not base64"),
        ([], "empty embedding vectors"),
        ("", "empty embedding vectors"),
    ],
)
def test_an_embedding_that_is_not_a_flat_list_of_numbers_is_that_requests_error(
    vector: Any, message: str
) -> None:
    """[[1.0, 2.0]] (a crash before), objects, strings, bools, nulls, empty vectors: an error."""
    server = Server(when_input("BAD", lambda req: with_vectors(req, lambda i: vector)))
    out = ROWS.llm.embed("text", batch_size=2, max_attempts=1, **options(server))
    assert_only_bad_rows_failed(out, {2, 3}, message)


def test_zero_length_vectors_with_the_cache_on_fail_their_rows_and_are_not_cached(
    tmp_path: Path,
) -> None:
    """Zero-length vectors broke the cache's flush (TypeError); now an error, and not cached."""
    cache = tmp_path / "c.sqlite"
    server = Server(when_input("BAD", lambda req: with_vectors(req, lambda i: "")))
    out = ROWS.llm.embed("text", batch_size=2, **options(server, cache))
    assert_only_bad_rows_failed(out, {2, 3}, "empty embedding vectors")
    healthy = Server(lambda req: None)
    again = ROWS.llm.embed("text", batch_size=2, **options(healthy, cache))
    assert_only_bad_rows_failed(again, set(), "")
    assert healthy.inputs == ["BAD", "c"] and again.attrs["dfbatch"]["rows_from_cache"] == 3


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (deep(1000), "JSON nested deeper than 64 levels"),
        ({"choices": "x"}, "no choices"),
        ({"choices": [7]}, "a choice is not an object"),
        ({"choices": [{"message": None}]}, "a choice has no message object"),
        ({"choices": [{"message": {"content": ["a"]}}]}, "the message's content is not text"),
        (  # msgspec refuses a lone surrogate: no frame or file is handed text it cannot hold
            b'{"choices": [{"message": {"content": "ab\\ud800"}}]}',
            "the server answered 200 with a body that is not JSON",
        ),
        ({"choices": [{"index": 3, "message": {"content": "x"}}]}, "choice index 3 out of range"),
        ({"choices": [{"message": {"content": "x"}}], "usage": []}, "usage is not an object"),
        (
            {"choices": [{"message": {"content": "x"}}], "usage": {"prompt_tokens": "lots"}},
            "usage.prompt_tokens is not a token count: 'lots'",
        ),
    ],
)
def test_a_malformed_chat_answer_is_that_rows_error(answer: Any, message: str) -> None:
    """complete(): a broken answer fails its row; usage=True columns stay integers."""
    df = pd.DataFrame({"q": ["one", "BAD", "three"]})
    server = Server(when_input("BAD", lambda req: answer))
    out = df.llm.complete("{q}", usage=True, max_attempts=1, **options(server))
    assert out["completion"].tolist() == ["echo: one", None, "echo: three"]
    errors = out["completion_error"].tolist()
    assert errors[0] is None and errors[2] is None and message in errors[1]
    assert out["completion_prompt_tokens"].tolist() == [5, pd.NA, 5]


# The hostile bodies every check must turn into a verdict (never an exception).
HOSTILE: list[bytes] = [
    b"",
    b"null",
    b"[]",
    b'"x"',
    b"1e400",
    b"9" * 5000,
    deep(1000),
    deep(65),
    b'{"data": null, "choices": null, "usage": 5}',
    b'{"data": [1], "choices": [1]}',
    b'{"data": [{"index": true, "embedding": [1]}], "choices": [{"index": "0"}]}',
    b'{"data": [{"index": 0, "embedding": [[1.0, 2.0]]}]}',
    b'{"data": [{"index": 0, "embedding": "AAAAAA=="}, {"index": 0, "embedding": [1]}]}',
    b'{"data": [{"index": 99999999999999999999999, "embedding": [1]}]}',
    b'{"choices": [{"message": {"content": null, "tool_calls": [{}]}}]}',
    b'{"choices": [{"message": {"content": null, "refusal": ["no"]}}]}',
    b'{"choices": [{"text": {"a": 1}}], "usage": {"total_tokens": 1e300}}',
]
ENDPOINTS = [
    ("/embeddings", {"model": "m", "input": ["a", "b"], "dimensions": 2}),
    ("/chat/completions", {"model": "m", "messages": [], "n": 2}),
    ("https://x/openai/deployments/d/completions?api-version=1", {"prompt": "p"}),
    ("/moderations", {"input": "x"}),
]


@pytest.mark.parametrize(("endpoint", "sent"), ENDPOINTS)
@pytest.mark.parametrize("status", [200, 400, 404, 500])
def test_every_hostile_body_gets_a_verdict_never_an_exception(
    endpoint: str, sent: dict[str, Any], status: int
) -> None:
    """Each check, on each hostile body, at each status: a verdict, never an exception; junk is
    never a SUCCESS where the endpoint's answers are known."""
    check = answer_check(endpoint, sent)
    for body in HOSTILE:
        verdict = classify_response(status, {}, body, check=check)
        if verdict.action is Action.SUCCESS:  # an endpoint whose answers only have a usage
            assert status == 200 and endpoint == "/moderations", body
        else:
            assert verdict.error is not None and len(str(verdict.error)) < 1_000


def test_a_check_that_breaks_is_still_only_that_requests_error() -> None:
    """The last resort: a shape the checks did not foresee fails its request, not the run."""

    def broken(body: Any) -> None:
        raise KeyError("surprise")

    verdict = classify_response(200, {"x-request-id": "req_1"}, b"{}", check=broken)
    assert verdict.action is Action.FAIL_ROW and verdict.error is not None
    assert str(verdict.error) == (
        "HTTP 200 invalid_response: the answer could not be checked (KeyError: 'surprise') "
        "(request id req_1)"
    )


def test_json_depth_is_measured_exactly() -> None:
    """64 levels pass, 65 do not; a float vector or a wide object is not walked element-wise."""
    assert not json_too_deep(json.loads(deep(64)), 64)
    assert json_too_deep(json.loads(deep(65)), 64)
    nested = {"a": [{"b": [1.5] * 10_000, "c": "[[[["}] * 100}
    assert not json_too_deep(nested, 4) and json_too_deep(nested, 3)
    assert not json_too_deep([10**400, 1.5], 1)  # sum() overflows: still numbers only


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ScriptedServer  # type: ignore[assignment]

    def do_POST(self) -> None:
        req = json.loads(self.rfile.read(int(self.headers["content-length"])))
        self.server.inputs.append(req["input"])
        req["input"] = [req["input"]]  # one text a line: answered as a list of one
        answer = self.server.answer(req)
        if answer is None:
            answer = good_embeddings(req)
        data = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


class ScriptedServer(ThreadingHTTPServer):
    """A tiny HTTP server on 127.0.0.1 answering ``answer(body)`` (None: the good answer) to
    ``dfbatch run``, which has no transport to swap; ``inputs`` are the texts it was sent."""

    def __init__(self, answer: Answer) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.answer = answer
        self.inputs: list[str] = []
        self.url = f"http://127.0.0.1:{self.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    def __enter__(self) -> ScriptedServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()


def test_cli_run_writes_every_line_and_exits_1_on_bad_answers(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """dfbatch run: each bad answer is its line's error result; the rest answered; exit 1."""
    bad = {
        "deep": lambda req: deep(1000),
        "lots": lambda req: {**good_embeddings(req), "usage": {"total_tokens": "lots"}},
        "nested": lambda req: with_vectors(req, lambda i: [[1.0, 2.0]]),
        "zero": lambda req: with_vectors(req, lambda i: []),
        "nan": lambda req: with_vectors(req, lambda i: b64(np.full(4, np.nan))),
        "short": lambda req: with_vectors(req, lambda i: [1.0]),
    }
    texts = ["ok 1", *bad, "ok 2", "abc\ud800"]
    requests = tmp_path / "in.jsonl"
    lines = [
        {"model": "emb", "input": text, "dimensions": 4, "metadata": i}
        for i, text in enumerate(texts)
    ]
    lines[5]["encoding_format"] = "base64"  # nan: base64 is the only way to send NaN
    requests.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "out.jsonl"
    with ScriptedServer(lambda req: bad.get(req["input"][0], lambda r: None)(req)) as server:
        status = main(["run", str(requests), "-o", str(out), "--url", server.url + "/embeddings",
                       "--max-attempts", "1", "--no-progress"])  # fmt: skip
    assert status == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row[2] for row in rows] == list(range(len(texts)))  # every line, in order
    for row, text in zip(rows, texts, strict=True):
        if text.startswith("ok"):
            got = np.asarray(row[1]["data"][0]["embedding"], np.float32)
            assert np.array_equal(got, vec(text, 4, "emb"))
    errors = {text: row[1][0]["message"] for row, text in zip(rows, texts, strict=True)
              if isinstance(row[1], list)}  # fmt: skip
    assert set(errors) == {*bad, "abc\ud800"}
    assert "nested deeper than 64 levels" in errors["deep"]
    assert "usage.total_tokens is not a token count: 'lots'" in errors["lots"]
    assert "not a list of numbers" in errors["nested"]
    assert "empty embedding vectors" in errors["zero"]
    assert "NaN or infinite" in errors["nan"]
    assert "vectors of 1 dimensions where dimensions=4 was asked" in errors["short"]
    assert "surrogates not allowed" in errors["abc\ud800"]

    # A healthy server now: --overwrite sends the failed lines again, the cache answers the rest.
    with ScriptedServer(lambda req: None) as healthy:
        status = main(["run", str(requests), "-o", str(out), "--url", healthy.url + "/embeddings",
                       "--overwrite", "--no-progress"])  # fmt: skip
    assert status == 1  # the surrogate line still cannot be sent
    assert sorted(healthy.inputs) == sorted(bad)  # nothing bad was cached; the good lines were
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    for row, text in zip(rows[:-1], texts[:-1], strict=True):
        got = row[1]["data"][0]["embedding"]
        got = np.frombuffer(base64.b64decode(got), "<f4") if isinstance(got, str) else got
        assert np.array_equal(np.asarray(got, np.float32), vec(text, 4, "emb"))


# -- 8. a wrong answer is never counted or cached ------------------------------------------------


def test_nan_vectors_are_retried_and_the_retry_answers_the_row() -> None:
    """NaN in a vector is a glitch worth another try: the second answer is placed."""
    calls: list[int] = []

    def bad(req: dict[str, Any]) -> Any:
        if "BAD" in req["input"] and not calls:
            calls.append(1)
            return with_vectors(req, lambda i: b64(np.full(1536, np.nan)))
        return None

    server = Server(bad)
    out = run_virtual(ROWS.llm.aembed("text", batch_size=2, **options(server)))
    assert_only_bad_rows_failed(out, set(), "")
    figures = out.attrs["dfbatch"]
    assert figures["retries"] == 1 and figures["requests_succeeded"] == 3


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf, 1e39])
def test_non_finite_vectors_fail_after_max_attempts_and_a_rerun_gets_the_right_answer(
    tmp_path: Path, value: float
) -> None:
    """NaN, inf or a float beyond float32 every time: a row error, never cached."""
    cache = tmp_path / "c.sqlite"
    vector = (lambda i: [value] * 1536) if value == 1e39 else (lambda i: b64(np.full(1536, value)))
    server = Server(when_input("BAD", lambda req: with_vectors(req, vector)))
    out = run_virtual(
        ROWS.llm.aembed("text", batch_size=2, max_attempts=3, **options(server, cache))
    )
    assert_only_bad_rows_failed(out, {2, 3}, "vectors with NaN or infinite values")
    assert out.attrs["dfbatch"]["requests"] == 2 + 3
    rerun_with_the_simulator(cache, expect_sent=["BAD", "c"])


def rerun_with_the_simulator(
    cache: Path, *, expect_sent: list[str], dimensions: int | None = None
) -> None:
    """The same call against the healthy simulator: the failed rows are asked again and get
    the right vectors; the others come from the cache."""
    with Simulator(record_inputs=True) as sim:
        again = ROWS.llm.embed(
            "text", batch_size=2, dimensions=dimensions, base_url=sim.base_url,
            api_key="sk-test", progress=False, cache=cache,
        )  # fmt: skip
        assert sorted(sim.stats.inputs) == sorted(expect_sent)
    assert again["embedding_error"].isna().all()
    for text, v in zip(again["text"], again["embedding"], strict=True):
        assert np.array_equal(v, vec(text, dimensions))


def test_vectors_of_another_length_than_asked_fail_and_are_not_cached(tmp_path: Path) -> None:
    """dimensions=8 asked, 4 answered: a row error; the rerun gets 8-d vectors."""
    cache = tmp_path / "c.sqlite"

    def short(req: dict[str, Any]) -> Any:
        return with_vectors(req, lambda i: b64(vec(req["input"][i], 4)))

    server = Server(when_input("BAD", short))
    out = ROWS.llm.embed("text", batch_size=2, dimensions=8, **options(server, cache))
    errors = out["embedding_error"].tolist()
    assert errors[:2] == [None, None] and errors[4] is None
    assert "vectors of 4 dimensions where dimensions=8 was asked" in errors[2]
    assert errors[3] == errors[2] and out["embedding"].iloc[2] is None
    assert out.attrs["dfbatch"]["requests_failed"] == 1
    rerun_with_the_simulator(cache, expect_sent=["BAD", "c"], dimensions=8)


def test_with_no_dimensions_asked_vectors_must_have_the_models_own_length() -> None:
    """text-embedding-3-small gives 1,536: a 3-d answer is wrong. An unknown model's lengths
    must agree within an answer and across answers."""
    server = Server(when_input("BAD", lambda req: with_vectors(req, lambda i: [1.0, 2.0, 3.0])))
    out = ROWS.llm.embed("text", batch_size=2, max_attempts=1, **options(server))
    assert_only_bad_rows_failed(out, {2, 3}, "vectors of 3 dimensions where " + SMALL)

    mixed = Server(lambda req: with_vectors(req, lambda i: [1.0] * (i + 1)))
    out = ROWS.llm.embed("text", model="my-model", max_attempts=1, **options(mixed))
    assert out["embedding"].isna().all()
    errors = out["embedding_error"].fillna("")
    assert errors.str.contains("different lengths in one response").all()

    def by_request(req: dict[str, Any]) -> Any:  # 2 dims for the first answer, 3 after
        return with_vectors(req, lambda i: [1.0] * (2 if "a" in req["input"] else 3))

    out = ROWS.llm.embed("text", model="m", batch_size=2, **options(Server(by_request)))
    errors = out["embedding_error"].tolist()
    assert errors[:2] == [None, None] and all("where others had 2" in e for e in errors[2:])


def test_a_chat_answer_with_no_content_is_a_row_error_and_a_rerun_gets_the_answer(
    tmp_path: Path,
) -> None:
    """content: null was shown as NA with no error; now its row's error, naming why; a refusal
    names the refusal; neither is cached, so the rerun against the simulator answers."""
    cache = tmp_path / "c.sqlite"

    def bad(req: dict[str, Any]) -> Any:
        text = req["messages"][-1]["content"]
        message: dict[str, Any] = {"role": "assistant", "content": None}
        if text == "refuse":
            message["refusal"] = "I can't help with that."
        elif text == "tools":
            message["tool_calls"] = [{"id": "c1", "type": "function"}]  # none were offered
        elif text != "filtered":
            return None
        finish = "content_filter" if text == "filtered" else "stop"
        return {"choices": [{"index": 0, "message": message, "finish_reason": finish}]}

    df = pd.DataFrame({"q": ["one", "refuse", "tools", "filtered", "two"]})
    out = df.llm.complete("{q}", **options(Server(bad), cache))
    assert out["completion"].tolist() == ["echo: one", None, None, None, "echo: two"]
    errors = out["completion_error"].tolist()
    assert errors[0] is None and errors[4] is None
    assert errors[1] == 'HTTP 200 refusal: the model refused: "I can\'t help with that."'
    assert "no content (finish_reason 'stop')" in errors[2]
    assert "no content (finish_reason 'content_filter')" in errors[3]
    assert out.attrs["dfbatch"]["failures_by_cause"] == {
        "HTTP 200 invalid_response": 2,
        "HTTP 200 refusal": 1,
    }
    with Simulator() as sim:
        again = df.llm.complete(
            "{q}", base_url=sim.base_url, api_key="sk-test", progress=False, cache=cache
        )
        assert sim.stats.requests == 3
    assert again["completion"].tolist() == [f"echo: {q}" for q in df["q"]]


def test_tool_calls_the_request_offered_are_the_rows_value() -> None:
    """With tools in extra_body, a message of tool calls and no content is a valid answer."""
    calls = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]

    def tool(req: dict[str, Any]) -> Any:
        message = {"role": "assistant", "content": None, "tool_calls": calls}
        return {"choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}]}

    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    df = pd.DataFrame({"q": ["one"]})
    out = df.llm.complete("{q}", extra_body={"tools": tools}, **options(Server(tool)))
    assert out["completion"].tolist() == [calls] and out["completion_error"].isna().all()


def test_n_choices_must_be_the_n_asked() -> None:
    """n=2 asked, one choice answered (a server that ignores n): the row's error, not a list
    of one."""
    out = pd.DataFrame({"q": ["one"]}).llm.complete(
        "{q}", n=2, max_attempts=1, **options(Server(lambda req: good_chat(req)))
    )
    assert "1 choices where n=2 was asked" in out["completion_error"][0]


def test_check_embeddings_names_the_first_problem() -> None:
    """The pure check: what was asked against what came back."""
    sent = {"model": "m", "input": ["a", "b"]}
    good = {"data": [{"index": 1, "embedding": [1.0, 2.0]}, {"index": 0, "embedding": [3, 4]}]}
    positions, matrix = check_embeddings(sent, good)
    assert positions == [1, 0] and matrix.dtype == np.float32 and matrix.shape == (2, 2)
    with pytest.raises(InvalidAnswer, match="over the 16,384 accepted"):
        check_embeddings(sent, {"data": [{"index": 0, "embedding": b64(np.zeros(16_385))}]})
    with pytest.raises(InvalidAnswer, match="index 2 out of range") as info:
        check_embeddings(sent, {"data": [{"index": 2, "embedding": [1.0]}]})
    assert not info.value.retry
    with pytest.raises(InvalidAnswer, match="NaN or infinite") as info:
        check_embeddings(sent, {"data": [{"index": 0, "embedding": b64(np.array([np.nan]))}]})
    assert info.value.retry


# -- 9. a text that cannot be sent fails alone ---------------------------------------------------


def test_a_lone_surrogate_fails_its_own_row_not_the_rows_packed_with_it() -> None:
    """embed(): "abc\\ud800" is refused before packing; the other rows go in one request."""
    texts = [f"row {i}" for i in range(100)]
    texts[50] = "abc\ud800"  # an object column: pandas' string dtype cannot hold it at all
    df = pd.DataFrame({"text": pd.Series(texts, dtype=object)})
    with Simulator() as sim:
        out = df.llm.embed("text", base_url=sim.base_url, api_key="sk-test", progress=False,
                           cache=False)  # fmt: skip
        assert sim.stats.requests == 1
    errors = out["embedding_error"]
    assert errors[50] == (
        "invalid input: the text is not valid Unicode (lone surrogate \\ud800 at character 3)"
    )
    assert errors.drop(50).isna().all() and out["embedding"][50] is None
    assert np.array_equal(out["embedding"][49], vec("row 49"))


def test_a_lone_surrogate_in_a_prompt_fails_its_own_row() -> None:
    """complete(): a template value or a prompt function's message with a lone surrogate."""
    df = pd.DataFrame({"q": pd.Series(["one", "t\udfffwo", "three"], dtype=object)})
    with Simulator() as sim:
        common = {"base_url": sim.base_url, "api_key": "sk-test", "progress": False, "cache": False}
        out = df.llm.complete("Say {q}", **common)
        by_function = df.llm.complete(lambda r: [{"role": "user", "content": [r.q]}], **common)
        assert sim.stats.requests == 4  # the surrogate rows were never sent
    for result in (out, by_function):
        errors = result["completion_error"].tolist()
        assert errors[0] is None and errors[2] is None and result["completion"][1] is None
        assert errors[1].startswith("invalid prompt: the text is not valid Unicode")
    assert out["completion"][2] == "echo: Say three"
