"""Token estimates: model -> encoding, counting, the chat formula and request TPM costs."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import pytest
import tiktoken

from dfbatch.engine import tokens as _tokens
from dfbatch.engine.constants import (
    CHARS_PER_TOKEN_FALLBACK,
    COMPLETIONS_DEFAULT_MAX_TOKENS,
    DEFAULT_COMPLETION_TOKENS,
    NON_TEXT_PART_TOKENS,
)
from dfbatch.engine.tokens import (
    chat_prompt_tokens,
    count_text,
    count_texts,
    encoding_name_for_model,
    estimate_request_tokens,
)

# tiktoken reads TIKTOKEN_CACHE_DIR when it first loads an encoding (below), not at import.
_CACHE = Path(__file__).resolve().parents[2] / "shared" / "tiktoken-cache"
if _CACHE.is_dir():
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(_CACHE))


def _encoding(name: str) -> tiktoken.Encoding | None:
    """The encoding, or None where it cannot be loaded (offline without a cache): the tests
    that count with it are marked needs_tiktoken and skipped there (see conftest)."""
    try:
        return tiktoken.get_encoding(name)
    except Exception:
        return None


O200K = _encoding("o200k_base")
CL100K = _encoding("cl100k_base")


def o200k(text: str) -> int:
    return len(O200K.encode_ordinary(text)) if O200K is not None else 0


def cl100k(text: str) -> int:
    return len(CL100K.encode_ordinary(text)) if CL100K is not None else 0


def chat(*parts: int) -> int:
    """The chat formula: the field tokens of each message + 3 per message + 3 priming."""
    return sum(parts) + 3 * len(parts) + 3


# --------------------------------------------------------------------------- model -> encoding


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-mini", "o200k_base"),
        ("gpt-4o-2024-08-06", "o200k_base"),
        ("gpt-4.1", "o200k_base"),
        ("gpt-4.1-nano", "o200k_base"),
        ("gpt-4.5-preview", "o200k_base"),
        ("gpt-5", "o200k_base"),
        ("gpt-5-mini", "o200k_base"),
        ("chatgpt-4o-latest", "o200k_base"),
        ("o1", "o200k_base"),
        ("o1-mini", "o200k_base"),
        ("o3", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("o4-mini", "o200k_base"),
        ("o4-mini-2025-04-16", "o200k_base"),
        ("gpt-oss-20b", "o200k_harmony"),
        ("gpt-oss-120b", "o200k_harmony"),
        ("gpt-4", "cl100k_base"),
        ("gpt-4-0613", "cl100k_base"),
        ("gpt-4-turbo", "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("gpt-3.5-turbo-0125", "cl100k_base"),
        ("gpt-35-turbo", "cl100k_base"),
        ("text-embedding-ada-002", "cl100k_base"),
        ("text-embedding-3-small", "cl100k_base"),
        ("text-embedding-3-large", "cl100k_base"),
        ("ft:gpt-4o-mini-2024-07-18:acme::A1b2", "o200k_base"),
        ("ft:gpt-4.1-mini-2025-04-14:acme:tag:B3c4", "o200k_base"),
        ("ft:gpt-3.5-turbo-0125:acme::C5d6", "cl100k_base"),
        ("openai/gpt-4o-mini", "o200k_base"),
        ("GPT-4o-Mini", "o200k_base"),
        ("my-company-chat-deployment", "o200k_base"),
        ("my-ada-embedding-deployment", "cl100k_base"),
        ("nomic-embed-text", "cl100k_base"),
        ("", "o200k_base"),
    ],
)
def test_encoding_name_for_model(model: str, encoding: str) -> None:
    """Each model name maps to tiktoken's encoding, or the documented default when unknown."""
    assert encoding_name_for_model(model) == encoding


def test_encoding_name_for_non_string_model() -> None:
    """A model that is not a string maps to the chat default instead of raising."""
    assert encoding_name_for_model(None) == "o200k_base"  # type: ignore[arg-type]


# --------------------------------------------------------------------------- counting


@pytest.mark.parametrize(
    "text",
    ["hello world", "Ünïcödé 日本語 text", "<|endoftext|> and <|im_start|>", "a" * 1000, "\ud800"],
)
@pytest.mark.parametrize("encoding", ["o200k_base", "cl100k_base"])
@pytest.mark.needs_tiktoken
def test_count_text_matches_tiktoken(text: str, encoding: str) -> None:
    """count_text equals tiktoken's encode_ordinary length, special-token text included."""
    expected = len(tiktoken.get_encoding(encoding).encode_ordinary(text))
    assert count_text(text, encoding) == expected


def test_count_text_empty_is_zero() -> None:
    """An empty string costs no tokens."""
    assert count_text("", "o200k_base") == 0


def test_count_texts_matches_count_text() -> None:
    """count_texts returns one count per text, in order, duplicates and empties included."""
    texts = ["row 1 some text", "", "row 1 some text", "<|endoftext|>", "日本語"]
    assert count_texts(texts, "cl100k_base") == [count_text(t, "cl100k_base") for t in texts]


@pytest.mark.needs_tiktoken
def test_count_texts_non_strings_count_as_json() -> None:
    """Non-string items (a NaN float, a number) count as their JSON text instead of raising."""
    assert count_texts([1.5, None], "o200k_base") == [o200k("1.5"), 0]  # type: ignore[list-item]


@pytest.mark.needs_tiktoken
def test_count_texts_accepts_any_iterable() -> None:
    """count_texts takes a generator as well as a list."""
    assert count_texts((t for t in ["a b", "c"]), "o200k_base") == [o200k("a b"), o200k("c")]


@pytest.mark.needs_tiktoken
def test_memo_is_bounded_and_never_changes_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Counts stay exact while the memo of recent strings fills up and is emptied."""
    monkeypatch.setattr(_tokens, "TOKEN_MEMO_CHARS", 20)
    count = _tokens._memo_counter(O200K)
    texts = ["short", "a somewhat longer text than the memo holds", "short", "x" * 15, "short"]
    for _ in range(3):
        assert [count(t) for t in texts] == [o200k(t) for t in texts]


# --------------------------------------------------------------------------- chat formula


@pytest.mark.needs_tiktoken
def test_chat_prompt_tokens_cookbook_formula() -> None:
    """3 per message + tokens of every field value + 1 per name + 3 for the reply priming."""
    messages = [
        {"role": "system", "content": "You are a helpful, pattern-following assistant."},
        {"role": "system", "name": "example_user", "content": "New synergies will help."},
        {"role": "user", "content": "This late pivot means we don't have time."},
    ]
    expected = chat(
        o200k("system") + o200k(messages[0]["content"]),
        o200k("system") + o200k("example_user") + 1 + o200k(messages[1]["content"]),
        o200k("user") + o200k(messages[2]["content"]),
    )
    assert chat_prompt_tokens(messages, "o200k_base") == expected


@pytest.mark.needs_tiktoken
def test_chat_prompt_tokens_list_content_parts() -> None:
    """Text parts count their text; an image part counts a fixed NON_TEXT_PART_TOKENS."""
    content = [
        {"type": "text", "text": "Describe this picture."},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 10_000}},
        {"type": "text", "text": "In one line."},
    ]
    expected = chat(
        o200k("user")
        + o200k("Describe this picture.")
        + o200k("In one line.")
        + NON_TEXT_PART_TOKENS
    )
    assert chat_prompt_tokens([{"role": "user", "content": content}], "o200k_base") == expected


@pytest.mark.needs_tiktoken
def test_chat_prompt_tokens_tool_calls_and_tool_message() -> None:
    """Assistant tool calls count function name and arguments; tool messages count all fields."""
    arguments = '{"city": "Paris", "unit": "celsius"}'
    messages = [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": arguments},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"},
    ]
    expected = chat(
        o200k("assistant") + o200k("get_weather") + o200k(arguments),
        o200k("tool") + o200k("call_1") + o200k("18 C, sunny"),
    )
    assert chat_prompt_tokens(messages, "o200k_base") == expected


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        ([], 3),
        (None, 3),
        ([{}], chat(0)),
        ([{"role": "user", "content": None}], chat(o200k("user"))),
        ([{"role": "user"}], chat(o200k("user"))),
        (
            [{"role": "assistant", "content": None, "tool_calls": None, "function_call": None}],
            chat(o200k("assistant")),
        ),
        ([{"role": "user", "content": 42}], chat(o200k("user") + o200k("42"))),
        (
            [{"role": "user", "content": [None, "plain", {"type": "text"}]}],
            chat(o200k("user") + o200k("plain")),
        ),
        (
            [{"role": "user", "content": {"odd": "shape"}}],
            chat(o200k("user") + o200k('{"odd": "shape"}')),
        ),
        (["just a string"], chat(o200k("just a string"))),
        ({"role": "user", "content": "hi"}, chat(o200k("user") + o200k("hi"))),
        (
            [{"role": "assistant", "function_call": {"name": "f", "arguments": "{}"}}],
            chat(o200k("assistant") + o200k("f") + o200k("{}")),
        ),
    ],
)
@pytest.mark.needs_tiktoken
def test_chat_prompt_tokens_odd_shapes(messages: Any, expected: int) -> None:
    """None, missing fields, non-string values and odd shapes are counted, never raised on."""
    assert chat_prompt_tokens(messages, "o200k_base") == expected


# --------------------------------------------------------------------------- request estimates

USER = [{"role": "user", "content": "hello world"}]
USER_TOKENS = chat(o200k("user") + o200k("hello world"))


@pytest.mark.parametrize(
    ("extra", "output"),
    [
        ({}, DEFAULT_COMPLETION_TOKENS),
        ({"max_tokens": 50}, 50),
        ({"max_completion_tokens": 70}, 70),
        ({"max_completion_tokens": 70, "max_tokens": 50}, 70),
        ({"max_completion_tokens": None, "max_tokens": 50}, 50),
        ({"n": 3, "max_tokens": 50}, 150),
        ({"n": None, "max_tokens": 50}, 50),
        ({"max_tokens": "lots"}, DEFAULT_COMPLETION_TOKENS),
    ],
)
@pytest.mark.needs_tiktoken
def test_chat_estimate_output_reservation(extra: dict[str, Any], output: int) -> None:
    """Chat reserves n x (max_completion_tokens, else max_tokens, else the default)."""
    body = {"model": "gpt-4o-mini", "messages": USER, **extra}
    assert estimate_request_tokens("/chat/completions", body) == USER_TOKENS + output


@pytest.mark.parametrize(
    "endpoint",
    [
        "/chat/completions",
        "chat/completions",
        "/v1/chat/completions/",
        "https://api.openai.com/v1/chat/completions",
        "https://x.openai.azure.com/openai/deployments/gpt4o/chat/completions?api-version=2024-10-21",
    ],
)
@pytest.mark.needs_tiktoken
def test_endpoint_spellings(endpoint: str) -> None:
    """Paths with or without a slash, full URLs and Azure paths are all recognised as chat."""
    body = {"model": "gpt-4o-mini", "messages": USER, "max_tokens": 1}
    assert estimate_request_tokens(endpoint, body) == USER_TOKENS + 1


@pytest.mark.needs_tiktoken
def test_chat_estimate_counts_tools() -> None:
    """Tool definitions cost the tokens of their JSON."""
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    body = {"model": "gpt-4o-mini", "messages": USER, "max_tokens": 0, "tools": tools}
    expected = USER_TOKENS + o200k(json.dumps(tools, ensure_ascii=False))
    assert estimate_request_tokens("/chat/completions", body) == expected


@pytest.mark.needs_tiktoken
def test_estimate_uses_model_encoding_or_explicit_one() -> None:
    """The body's model picks the encoding unless one is passed explicitly."""
    text = "Ünïcödé 日本語 tokenization differs between encodings"
    body = {"model": "gpt-4", "messages": [{"role": "user", "content": text}], "max_tokens": 0}
    assert estimate_request_tokens("/chat/completions", body) == chat(cl100k("user") + cl100k(text))
    assert estimate_request_tokens("/chat/completions", body, "o200k_base") == chat(
        o200k("user") + o200k(text)
    )


@pytest.mark.parametrize(
    ("prompt", "prompt_tokens", "prompts"),
    [
        ("hello world", o200k("hello world"), 1),
        (["hello world", "bye"], o200k("hello world") + o200k("bye"), 2),
        ([1, 2, 3, 4], 4, 1),
        ([[1, 2], [3, 4, 5]], 5, 2),
        (None, 1, 1),
    ],
)
@pytest.mark.needs_tiktoken
def test_completions_estimate(prompt: Any, prompt_tokens: int, prompts: int) -> None:
    """Legacy completions: prompt tokens + prompts x n x max_tokens (default 16, as the API)."""
    body: dict[str, Any] = {"model": "gpt-4o-mini", "prompt": prompt}
    expected = prompt_tokens + prompts * COMPLETIONS_DEFAULT_MAX_TOKENS
    assert estimate_request_tokens("/completions", body) == expected
    body.update(n=2, max_tokens=10)
    assert estimate_request_tokens("/completions", body) == prompt_tokens + prompts * 2 * 10


def test_completions_best_of_reserves_more() -> None:
    """best_of above n reserves best_of completions."""
    body = {"model": "davinci-002", "prompt": [1, 2], "max_tokens": 10, "n": 1, "best_of": 3}
    assert estimate_request_tokens("/completions", body) == 2 + 30


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("hello world", cl100k("hello world")),
        (["hello world", "row 2", "hello world"], 2 * cl100k("hello world") + cl100k("row 2")),
        ([101, 102, 103], 3),
        ([[101, 102], [103]], 3),
        (["text", [1, 2]], cl100k("text") + 2),
        ([], 0),
        (None, 0),
    ],
)
@pytest.mark.needs_tiktoken
def test_embeddings_estimate(value: Any, expected: int) -> None:
    """Embeddings cost their input's tokens: strings encoded, token-id lists by length."""
    body = {"model": "text-embedding-3-small", "input": value}
    assert estimate_request_tokens("/embeddings", body) == expected


@pytest.mark.needs_tiktoken
def test_embeddings_without_model_use_cl100k() -> None:
    """An embeddings body with no model is counted with cl100k_base, the embeddings encoding."""
    text = "Ünïcödé 日本語 tokenization differs"
    assert estimate_request_tokens("embeddings", {"input": text}) == cl100k(text)


@pytest.mark.parametrize(
    ("endpoint", "body"),
    [
        ("/moderations", {"input": "x" * 30}),
        ("/responses", {"model": "gpt-4o", "input": "hello"}),
        ("/chat/completions", ["not", "a", "dict"]),
        (None, {"input": "x"}),
    ],
)
def test_unknown_endpoint_or_body_estimated_from_json_length(endpoint: Any, body: Any) -> None:
    """Unknown endpoints and non-dict bodies cost len(JSON) / CHARS_PER_TOKEN_FALLBACK."""
    expected = math.ceil(len(json.dumps(body, ensure_ascii=False)) / CHARS_PER_TOKEN_FALLBACK)
    assert estimate_request_tokens(endpoint, body) == expected


def test_unknown_endpoint_adds_explicit_output_cap() -> None:
    """An unknown endpoint still reserves an explicit max_output_tokens."""
    body = {"max_output_tokens": 500}
    base = math.ceil(len('{"max_output_tokens": 500}') / CHARS_PER_TOKEN_FALLBACK)
    assert estimate_request_tokens("/responses", body) == base + 500


def test_estimate_never_raises_on_broken_body() -> None:
    """A body whose fields break every rule still gets an estimate instead of an exception."""

    class Weird:
        def __str__(self) -> str:
            return "weird"

    body = {"model": 5, "messages": [{"role": Weird(), "content": [Weird()]}], "n": -3}
    assert estimate_request_tokens("/chat/completions", body) > 0


# --------------------------------------------------------------------------- offline fallback


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """tiktoken cannot load any encoding, and nothing is loaded yet."""

    def fail(name: str) -> None:
        raise ConnectionError("no internet")

    monkeypatch.setattr(tiktoken, "get_encoding", fail)
    monkeypatch.setattr(_tokens, "_ENCODINGS", {})


@pytest.mark.usefixtures("offline")
def test_fallback_estimates_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    """Without an encoding, counts are ceil(len / CHARS_PER_TOKEN_FALLBACK), one warning each."""
    caplog.set_level(logging.WARNING, logger="dfbatch")
    text = "hello world, offline"
    for _ in range(50):
        assert count_text(text, "o200k_base") == math.ceil(len(text) / CHARS_PER_TOKEN_FALLBACK)
    assert count_texts(["abcd", "", "ab"], "o200k_base") == [2, 0, 1]
    body = {"model": "gpt-4o-mini", "messages": USER, "max_tokens": 0}
    estimate_request_tokens("/chat/completions", body)

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "o200k_base" in message
    assert "ESTIMATED" in message
    assert "TIKTOKEN_CACHE_DIR" in message

    count_text(text, "cl100k_base")
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2
