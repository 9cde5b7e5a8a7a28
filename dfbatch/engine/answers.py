"""Is a 2xx answer what was asked? Every answer is checked before it counts, is cached or used.

The engine picks the check for a request's endpoint (:func:`answer_check`) and hands it to
:func:`dfbatch.engine.retry.classify_response`: an answer the check refuses is that request's error
(retried only where asking again can help), never counted as a success, cached or placed on
a row. Checks are pure functions of the body sent and the parsed answer.

=====================  ==================================================================
endpoint               a valid answer
=====================  ==================================================================
every endpoint         JSON nested at most RESPONSE_MAX_DEPTH deep; ``usage`` absent, null,
                       or token counts that are integers in [0, USAGE_MAX_TOKENS]
``/embeddings``        :func:`check_embeddings`: one vector per input index
                       at most, all of the length asked (``dimensions``, else the model's
                       own when known), every number finite (NaN or inf: retried)
``/chat/completions``  :func:`check_chat`: ``n`` choices of text, or of the
                       tool calls (or audio) asked for; a refusal is the row's error
``/completions``       choices, each with a ``text`` string
=====================  ==================================================================
"""

from __future__ import annotations

import binascii
from collections.abc import Mapping
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import msgspec
import numpy as np
import pybase64

from . import constants as C
from .retry import Check, InvalidAnswer, check_usage, quote


def answer_check(endpoint: str, sent: Mapping[str, Any]) -> Check:
    """The check for answers to the body ``sent`` at ``endpoint`` (a path or a full URL).

    >>> url = "https://x.openai.azure.com/openai/deployments/d/embeddings?api-version=1"
    >>> answer_check(url, {}).func is check_embeddings
    True
    """
    path = "/" + urlsplit(endpoint).path.strip("/")
    if path.endswith("/embeddings"):
        return partial(check_embeddings, sent)
    if path.endswith("/chat/completions"):
        return partial(check_chat, sent)
    if path.endswith("/completions"):
        return partial(check_completions, sent)
    return check_usage


def asked_of(endpoint: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a request ``body`` that :func:`answer_check` reads, small enough to keep
    for every line of a Batch API file: a batch's answers come back long after the bodies are
    gone, and are checked against this (:func:`check_as_asked`) before they are cached.

    >>> asked_of("/v1/embeddings", {"model": "m", "input": ["a", "b"], "dimensions": 8})
    {'inputs': 2, 'dimensions': 8, 'model': 'm'}
    >>> asked_of("/v1/chat/completions", {"model": "m", "messages": [], "n": 2})
    {'n': 2}
    """
    path = "/" + urlsplit(endpoint).path.strip("/")
    asked: dict[str, Any] = {}
    if path.endswith("/embeddings"):
        asked["inputs"] = input_count(body.get("input"))
        if type(body.get("dimensions")) is int:
            asked["dimensions"] = body["dimensions"]
        if isinstance(body.get("model"), str):
            asked["model"] = body["model"]
    elif path.endswith("/chat/completions"):
        if type(body.get("n")) is int:
            asked["n"] = body["n"]
        if body.get("tools") or body.get("functions"):
            asked["tools"] = True
        modalities = body.get("modalities")
        if isinstance(modalities, list) and "audio" in modalities:
            asked["modalities"] = ["audio"]
    return asked


def check_as_asked(endpoint: str, asked: Mapping[str, Any]) -> Check:
    """The check :func:`answer_check` would give for the body that ``asked`` was taken from.

    >>> check = check_as_asked("/v1/embeddings", {"inputs": 1, "dimensions": 2})
    >>> check({"data": [{"index": 0, "embedding": [1.0]}]})
    Traceback (most recent call last):
    dfbatch.engine.retry.InvalidAnswer: vectors of 1 dimensions where dimensions=2 was asked
    """
    path = "/" + urlsplit(endpoint).path.strip("/")
    if path.endswith("/embeddings"):
        inputs = asked.get("inputs")
        return partial(
            check_vectors,
            inputs=inputs if type(inputs) is int and inputs >= 0 else 1,
            dimensions=asked.get("dimensions"),
            model=asked.get("model"),
        )
    # The chat and completions checks read the same keys from ``asked`` as from the body.
    return answer_check(endpoint, asked)


def check_completions(sent: Mapping[str, Any], response: Any) -> None:
    """A legacy ``/completions`` answer: choices, each with a ``text`` string.

    >>> check_completions({}, {"choices": [{"text": None}]})
    Traceback (most recent call last):
    dfbatch.engine.retry.InvalidAnswer: a choice's text is not text: None
    """
    choices = response.get("choices") if isinstance(response, dict) else None
    if not isinstance(choices, list) or not choices:
        raise InvalidAnswer("no choices")
    for choice in choices:
        text = choice.get("text") if isinstance(choice, dict) else None
        if not isinstance(text, str):
            raise InvalidAnswer(f"a choice's text is not text: {quote(text)}")
    check_usage(response)


# -- /embeddings: vectors read from base64 or JSON lists, then checked ----------------------


def _decode_base64(value: str) -> bytes:
    try:  # validate=True takes pybase64's SIMD path: 3x faster than without, 18x binascii
        raw = pybase64.b64decode(value, validate=True)
    except binascii.Error:  # stray characters (a line break...): the lenient decoder skips them
        try:
            raw = pybase64.b64decode(value)
        except ValueError as exc:  # binascii.Error, or characters that are not ASCII
            raise ValueError(f"an embedding is not base64 ({exc})") from None
    if len(raw) % 4:
        raise ValueError("base64 embedding is not a whole number of float32 values")
    return raw


def decode_vector(value: Any) -> np.ndarray:
    """A float32 vector from base64 (little-endian float32) or a JSON list of numbers.

    ValueError for anything else: a nested list, a string, a bool or null among the numbers,
    an integer beyond any float. Numbers beyond float32 become infinite (refused later).
    """
    if isinstance(value, str):
        return np.frombuffer(_decode_base64(value), dtype="<f4")
    if isinstance(value, list):
        try:  # exactly ints and floats, in C (numpy would take "1.5", True and null)
            numbers = msgspec.convert(value, list[float])
        except msgspec.ValidationError as exc:
            raise ValueError(f"an embedding is not a list of numbers ({exc})") from None
        with np.errstate(over="ignore"):
            return np.asarray(numbers, dtype=np.float32)
    kind = "null" if value is None else type(value).__name__
    raise ValueError(f"embedding of unexpected type {kind}")


def input_count(value: Any) -> int:
    """How many inputs a request body's ``input`` holds (a list of token ids is one input).

    >>> input_count("a"), input_count(["a", "b"]), input_count([1, 2, 3]), input_count([[1], [2]])
    (1, 2, 1, 2)
    """
    if isinstance(value, list):
        return 1 if value and type(value[0]) is int else len(value)
    return 1


def parse_embeddings(response: Any, n_inputs: int) -> tuple[list[int], np.ndarray]:
    """A response's vectors as one float32 matrix: row ``i`` answers input ``positions[i]``,
    joined on each item's ``index`` (servers may reorder); an input without an item is absent.
    ValueError when the answer cannot be read so.

    >>> parse_embeddings({"data": [{"index": 1, "embedding": [1, 2]}]}, 2)
    ([1], array([[1., 2.]], dtype=float32))
    """
    data = response.get("data") if isinstance(response, dict) else None
    if not isinstance(data, list):
        raise ValueError("no 'data' list in the response")
    positions: list[int] = []
    values: list[Any] = []
    for pos, item in enumerate(data):
        index = item.get("index", pos) if isinstance(item, dict) else None
        if type(index) is not int or not 0 <= index < n_inputs:
            raise ValueError(f"embedding index {quote(index)} out of range")
        positions.append(index)
        values.append(item.get("embedding"))
    if len(set(positions)) < len(positions):
        raise ValueError("an embedding index given twice")
    if values and all(type(v) is str for v in values):
        # base64: decode each, then view them all as one matrix (one copy, no per-row arrays)
        raws = [_decode_base64(v) for v in values]
        sizes = set(map(len, raws))
        if len(sizes) > 1:
            lengths = sorted(size // 4 for size in sizes)
            raise ValueError(f"embeddings of different lengths in one response: {lengths}")
        width = sizes.pop() // 4
        return positions, np.frombuffer(b"".join(raws), "<f4").reshape(len(raws), width)
    vectors = [decode_vector(v) for v in values]
    dims = {v.shape[0] for v in vectors}
    if len(dims) > 1:
        raise ValueError(f"embeddings of different lengths in one response: {sorted(dims)}")
    return positions, np.stack(vectors) if vectors else np.zeros((0, 0), np.float32)


def check_embeddings(sent: Mapping[str, Any], response: Any) -> tuple[list[int], np.ndarray]:
    """An answer to the embeddings request body ``sent``, read (:func:`parse_embeddings`) and
    checked before it counts or is cached: vectors of the length asked (``dimensions``, else
    the model's own when known), at most EMBED_MAX_DIMENSIONS long, every number finite, and a
    valid ``usage``. Raises InvalidAnswer; NaN or infinite values are retried (a glitch).

    >>> check_embeddings({"model": "m", "input": ["a"], "dimensions": 2},
    ...                  {"data": [{"index": 0, "embedding": [1.0]}]})
    Traceback (most recent call last):
    dfbatch.engine.retry.InvalidAnswer: vectors of 1 dimensions where dimensions=2 was asked
    """
    return check_vectors(
        response,
        inputs=input_count(sent.get("input")),
        dimensions=sent.get("dimensions"),
        model=sent.get("model"),
    )


def check_vectors(
    response: Any, *, inputs: int, dimensions: Any, model: Any
) -> tuple[list[int], np.ndarray]:
    """:func:`check_embeddings` given what it reads of the body: how many ``inputs`` were
    sent, the ``dimensions`` and the ``model`` asked."""
    try:
        positions, matrix = parse_embeddings(response, inputs)
    except ValueError as exc:
        raise InvalidAnswer(str(exc)) from None
    if positions:
        width = matrix.shape[1]
        expected, why = None, ""
        if type(dimensions) is int:
            expected, why = dimensions, f"dimensions={dimensions} was asked"
        elif isinstance(model, str) and model in C.EMBEDDING_DIMENSIONS:
            expected = C.EMBEDDING_DIMENSIONS[model]
            why = f"{model} gives {expected}"
        if width == 0:
            raise InvalidAnswer("empty embedding vectors")
        if expected is not None and width != expected:
            raise InvalidAnswer(f"vectors of {width} dimensions where {why}")
        if width > C.EMBED_MAX_DIMENSIONS:
            raise InvalidAnswer(
                f"vectors of {width:,} dimensions, over the {C.EMBED_MAX_DIMENSIONS:,} accepted"
            )
        if not np.isfinite(matrix).all():
            raise InvalidAnswer("vectors with NaN or infinite values", retry=True)
    check_usage(response)
    return positions, matrix


# -- /chat/completions ----------------------------------------------------------------------------


def check_chat(sent: Mapping[str, Any], response: Any) -> None:
    """Raise InvalidAnswer unless ``response`` is a chat completion answering the body
    ``sent``: ``n`` choices, indexed 0 to n-1 once each, each a message whose content is text,
    or null with the tool calls (or audio) the request asked for; and a valid ``usage``.
    A refusal is the request's error (code ``refusal``), quoting what the model said.

    >>> check_chat({}, {"choices": [{"message": {"content": None, "refusal": "No."}}]})
    Traceback (most recent call last):
    dfbatch.engine.retry.InvalidAnswer: the model refused: 'No.'
    """
    choices = response.get("choices") if isinstance(response, dict) else None
    if not isinstance(choices, list) or not choices:
        raise InvalidAnswer("no choices")
    n = sent.get("n")
    n = n if type(n) is int and n >= 1 else 1
    if len(choices) != n:
        raise InvalidAnswer(f"{len(choices)} choices where n={n} was asked")
    tools = bool(sent.get("tools") or sent.get("functions"))
    modalities = sent.get("modalities")
    audio = isinstance(modalities, list) and "audio" in modalities
    seen: set[int] = set()
    for pos, choice in enumerate(choices):
        if not isinstance(choice, dict):
            raise InvalidAnswer("a choice is not an object")
        index = choice.get("index", pos)
        if type(index) is not int or not 0 <= index < n or index in seen:
            raise InvalidAnswer(f"choice index {quote(index)} out of range or given twice")
        seen.add(index)
        message = choice.get("message")
        if not isinstance(message, dict):
            raise InvalidAnswer("a choice has no message object")
        content = message.get("content")
        if isinstance(content, str):
            continue
        if content is not None:
            raise InvalidAnswer(f"the message's content is not text: {quote(content)}")
        refusal = message.get("refusal")
        if isinstance(refusal, str) and refusal:
            raise InvalidAnswer(f"the model refused: {quote(refusal)}", code="refusal")
        calls = message.get("tool_calls")
        if tools and (
            (isinstance(calls, list) and calls) or isinstance(message.get("function_call"), dict)
        ):
            continue
        if audio and isinstance(message.get("audio"), dict):
            continue
        raise InvalidAnswer(
            f"the answer has no content (finish_reason {quote(choice.get('finish_reason'))})"
        )
    check_usage(response)
