"""Deterministic answers: the exact values the simulator returns, computable offline.

Every answer is a pure function of the request, so a test can check a client's output
against these helpers without talking to the server::

    >>> count_tokens("hello world!")
    3
    >>> expected_content({"model": "gpt-4o-mini",
    ...                   "messages": [{"role": "user", "content": "hi"}]})
    'echo: hi'
    >>> vec = expected_embedding("hi")
    >>> vec.dtype, vec.shape
    (dtype('float32'), (1536,))

Rules (choice ``i`` answers as if the user text were ``text + f" [{i}]"`` when ``i > 0``):

* plain text: ``"echo: " + text`` where ``text`` is the last user message's text
  (a list of parts has its ``text`` parts joined by ``"\\n"``; ``None`` is ``""``);
* ``response_format={"type": "json_object"}``: ``json.dumps({"echo": text})``;
* ``response_format={"type": "json_schema", ...}``: ``json.dumps`` of an object that fills
  the schema (see :func:`fill_schema`);
* a JSON format and the marker ``[[invalid-json]]`` in the text: deliberately broken JSON
  (``'{"echo": "..."'`` without the closing brace);
* legacy completions: ``"echo: " + prompt``, choices ordered prompt by prompt, ``n`` each.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from functools import lru_cache
from hashlib import blake2b
from typing import Any

import numpy as np

__all__ = [
    "EMBEDDING_DIMENSIONS",
    "INVALID_JSON_MARKER",
    "count_tokens",
    "default_dimensions",
    "estimated_tokens",
    "expected_completion",
    "expected_content",
    "expected_embedding",
    "expected_embeddings",
    "fill_schema",
    "input_texts",
    "last_user_text",
    "message_text",
    "prompt_tokens",
]

#: Native (and maximum) dimensions of the known embedding models.
EMBEDDING_DIMENSIONS: dict[str, int] = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}
#: Dimensions of embedding models not in :data:`EMBEDDING_DIMENSIONS`.
DEFAULT_DIMENSIONS = 1536
#: Put this in the last user message to get invalid JSON back when a JSON format is asked.
INVALID_JSON_MARKER = "[[invalid-json]]"

_BASIS_ROWS = 64  # one int8 coefficient per byte of a 64-byte blake2b digest


_TOKEN = re.compile(r"\w+|[^\w\s]")


def count_tokens(text: str) -> int:
    """Tokens the simulator counts for ``text``: its words and punctuation marks, at least 1.

    Cheap, and close to a BPE count for English (a little under it), so the simulator never
    refuses what a real server would take.

    >>> count_tokens(""), count_tokens("Hello, world!"), count_tokens("word " * 10)
    (1, 4, 10)
    """
    return max(1, len(_TOKEN.findall(text)))


def default_dimensions(model: str) -> int:
    """Dimensions returned when a request sets none: 3072 for text-embedding-3-large, else 1536.

    >>> default_dimensions("text-embedding-3-large")
    3072
    """
    return EMBEDDING_DIMENSIONS.get(model, DEFAULT_DIMENSIONS)


@lru_cache(maxsize=64)
def _basis(model: str, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed random integer matrix B (64 x dim, entries in [-127, 127]) for (model, dim),
    and its Gram matrix B @ B.T in float64 (exact: integers below 2**53)."""
    seed = int.from_bytes(blake2b(f"{model}\0{dim}".encode(), digest_size=8).digest(), "little")
    rng = np.random.default_rng(seed)
    basis = rng.integers(-127, 128, size=(_BASIS_ROWS, dim)).astype(np.float32)
    gram = basis.astype(np.float64) @ basis.T.astype(np.float64)
    basis.flags.writeable = False
    gram.flags.writeable = False
    return basis, gram


def expected_embeddings(
    texts: Sequence[str], *, model: str = "text-embedding-3-small", dimensions: int | None = None
) -> np.ndarray:
    """Embeddings of many texts at once, shape ``(len(texts), dim)``, float32, unit norm.

    Row ``i`` equals ``expected_embedding(texts[i], ...)`` bit for bit, however the texts are
    batched: the 64-byte blake2b digest of the text, read as 64 int8 coefficients ``c``, times
    a fixed integer basis ``B`` (exact in float32: every partial sum is an integer below
    2**24), times ``float32(1 / sqrt(c G c))`` with ``G = B B^T`` (exact integers in float64).
    Every rounding step is elementwise, so the result does not depend on the batch.
    Different texts give different vectors; the same text always the same one.

    >>> m = expected_embeddings(["a", "b"], dimensions=8)
    >>> m.shape, bool((m[0] == expected_embedding("a", dimensions=8)).all())
    ((2, 8), True)
    """
    dim = default_dimensions(model) if dimensions is None else int(dimensions)
    if dim <= 0:
        raise ValueError(f"dimensions must be positive, got {dim}")
    basis, gram = _basis(model, dim)
    digests = b"".join(
        blake2b(t.encode("utf-8", "surrogatepass"), digest_size=64).digest() for t in texts
    )
    coef = np.frombuffer(digests, dtype=np.int8).reshape(len(texts), _BASIS_ROWS)
    coef64 = coef.astype(np.float64)
    # einsum, not matmul: no BLAS threads (they spin and starve the server's event loop).
    squares = np.einsum("ij,ij->i", np.einsum("ij,jk->ik", coef64, gram), coef64)  # exact
    np.maximum(squares, 1.0, out=squares)
    scale = (1.0 / np.sqrt(squares)).astype(np.float32)
    out = np.einsum("ij,jk->ik", coef.astype(np.float32), basis)
    out *= scale[:, None]
    return out


def expected_embedding(
    text: str, *, model: str = "text-embedding-3-small", dimensions: int | None = None
) -> np.ndarray:
    """The embedding the simulator returns for ``text``: float32, unit norm, ``dim`` long.

    A pure function of ``(model, dimensions, text)``; ``dimensions=None`` means the model's
    default (:func:`default_dimensions`).

    >>> v = expected_embedding("hello", dimensions=256)
    >>> v.shape, round(float(v @ v), 5)
    ((256,), 1.0)
    """
    return expected_embeddings([text], model=model, dimensions=dimensions)[0]


def input_texts(value: Any) -> list[str]:
    """The texts of an embeddings ``input`` (or a completions ``prompt``).

    A string is one text; a list of strings many; a list of ints is one token array and a
    list of lists of ints many; a token array becomes its ints joined by spaces.
    Raises ``TypeError`` for anything else.

    >>> input_texts("a"), input_texts(["a", "b"]), input_texts([1, 2]), input_texts([[3], [4, 5]])
    (['a'], ['a', 'b'], ['1 2'], ['3', '4 5'])
    """
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise TypeError("input must be a string or a list")
    if value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return [" ".join(map(str, value))]
    texts: list[str] = []
    for item in value:
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, list) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in item
        ):
            texts.append(" ".join(map(str, item)))
        else:
            raise TypeError("input items must be strings or lists of token ids")
    return texts


def message_text(content: Any) -> str:
    """The text of a chat message's ``content``: a string, ``None`` or a list of parts.

    >>> message_text([{"type": "text", "text": "a"}, {"type": "image_url"},
    ...               {"type": "text", "text": "b"}])
    'a\\nb'
    """
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(p.get("text", ""))
            for p in content
            if isinstance(p, dict) and p.get("type") == "text"
        )
    return str(content)


def last_user_text(messages: Iterable[Any]) -> str:
    """The text of the last message whose role is ``"user"`` (``""`` if there is none)."""
    text = ""
    for m in messages:
        if isinstance(m, dict) and m.get("role") == "user":
            text = message_text(m.get("content"))
    return text


def prompt_tokens(body: dict[str, Any]) -> int:
    """Prompt tokens of a chat or legacy completions request, as the simulator bills them.

    Chat: ``count_tokens`` of each message's text, summed. Legacy: of each prompt, summed.
    """
    if "messages" in body:
        return sum(
            count_tokens(message_text(m.get("content") if isinstance(m, dict) else m))
            for m in body["messages"]
        )
    return sum(count_tokens(p) for p in input_texts(body.get("prompt", "")))


def estimated_tokens(body: dict[str, Any]) -> int:
    """Tokens charged against TPM: prompt tokens + n x (max_completion_tokens or max_tokens or 0).

    For an embeddings request (``input`` in the body): the input tokens.
    """
    if "input" in body:
        return sum(count_tokens(t) for t in input_texts(body["input"]))
    out = body.get("max_completion_tokens") or body.get("max_tokens") or 0
    return prompt_tokens(body) + int(body.get("n") or 1) * int(out)


_STRING_FORMATS = {
    "date": "2024-01-01",
    "date-time": "2024-01-01T00:00:00Z",
    "time": "00:00:00",
    "email": "sim@example.com",
    "uri": "https://example.com/",
    "uuid": "00000000-0000-4000-8000-000000000000",
}


def fill_schema(schema: Any, text: str, *, root: Any = None, depth: int = 0) -> Any:
    """A value of JSON schema ``schema`` derived from ``text``, deterministically.

    ``enum`` -> first value, ``const`` -> it; string -> ``text`` (or a fixed sample for
    date/date-time/time/email/uri/uuid formats; min/maxLength honoured); integer ->
    ``len(text)`` and number -> ``len(text) + 0.5`` (clamped to minimum/maximum);
    boolean -> ``len(text) % 2 == 0``; array -> ``max(1, minItems)`` items (capped by
    maxItems); object -> every property filled; ``anyOf``/``oneOf``/``allOf`` -> the first
    option; ``$ref`` to ``#/$defs/...`` or ``#/definitions/...`` is followed.

    >>> fill_schema({"type": "object", "properties": {"name": {"type": "string"},
    ...     "n": {"type": "integer"}, "ok": {"type": "boolean"},
    ...     "tag": {"enum": ["x", "y"]},
    ...     "xs": {"type": "array", "items": {"type": "number"}}}}, "abc")
    {'name': 'abc', 'n': 3, 'ok': False, 'tag': 'x', 'xs': [3.5]}
    """
    root = schema if root is None else root
    if not isinstance(schema, dict) or depth > 32:
        return None
    if "$ref" in schema:
        return fill_schema(_resolve_ref(root, schema["$ref"]), text, root=root, depth=depth + 1)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        options = schema.get(key)
        if options:
            usable = [o for o in options if not (isinstance(o, dict) and o.get("type") == "null")]
            return fill_schema((usable or options)[0], text, root=root, depth=depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
    if kind == "string":
        value = _STRING_FORMATS.get(schema.get("format", ""), text)
        if "maxLength" in schema:
            value = value[: int(schema["maxLength"])]
        return value.ljust(int(schema.get("minLength", 0)), "x")
    if kind in ("integer", "number"):
        num: float = len(text) if kind == "integer" else len(text) + 0.5
        if "minimum" in schema:
            num = max(num, schema["minimum"])
        if "maximum" in schema:
            num = min(num, schema["maximum"])
        return int(num) if kind == "integer" else float(num)
    if kind == "boolean":
        return len(text) % 2 == 0
    if kind == "null":
        return None
    if kind == "array":
        count = max(1, int(schema.get("minItems", 0)))
        count = min(count, int(schema.get("maxItems", count)))
        items = schema.get("items", {})
        return [fill_schema(items, text, root=root, depth=depth + 1) for _ in range(count)]
    props = schema.get("properties") or {}
    return {k: fill_schema(v, text, root=root, depth=depth + 1) for k, v in props.items()}


def _resolve_ref(root: Any, ref: str) -> Any:
    node = root
    if not ref.startswith("#"):
        return {}
    for part in ref.lstrip("#").strip("/").split("/"):
        if not part:
            continue
        part = part.replace("~1", "/").replace("~0", "~")
        node = node.get(part, {}) if isinstance(node, dict) else {}
    return node


def _choice_text(text: str, choice_index: int) -> str:
    return text if choice_index == 0 else f"{text} [{choice_index}]"


def expected_content(body: dict[str, Any], choice_index: int = 0) -> str:
    """The content of choice ``choice_index`` for a chat (or legacy completions) request body.

    >>> body = {"messages": [{"role": "user", "content": "hi"}], "n": 2}
    >>> expected_content(body, 1)
    'echo: hi [1]'
    >>> expected_content({**body, "response_format": {"type": "json_object"}})
    '{"echo": "hi"}'
    """
    if "messages" not in body:  # legacy completions: n choices per prompt
        n = int(body.get("n") or 1)
        prompts = input_texts(body.get("prompt", ""))
        return "echo: " + _choice_text(prompts[choice_index // n], choice_index % n)
    user = last_user_text(body["messages"])
    text = _choice_text(user, choice_index)
    fmt = body.get("response_format") or {}
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind not in ("json_object", "json_schema"):
        return "echo: " + text
    if INVALID_JSON_MARKER in user:
        return '{"echo": ' + json.dumps(text)
    if kind == "json_object":
        return json.dumps({"echo": text})
    spec = fmt.get("json_schema") or {}
    schema = spec.get("schema", {}) if isinstance(spec, dict) else {}
    return json.dumps(fill_schema(schema, text))


def expected_completion(body: dict[str, Any]) -> dict[str, Any]:
    """The response to a chat (or legacy completions) request, without ``id`` and ``created``.

    ``choices`` holds ``n`` choices for chat, ``n`` per prompt for legacy completions; every
    ``finish_reason`` is ``"stop"``; ``usage`` counts with :func:`count_tokens`.

    >>> r = expected_completion({"model": "gpt-4o-mini",
    ...                          "messages": [{"role": "user", "content": "hi"}]})
    >>> r["choices"][0]["message"]["content"], r["usage"]["total_tokens"]
    ('echo: hi', 4)
    """
    n = int(body.get("n") or 1)
    model = body.get("model", "")
    ptok = prompt_tokens(body)
    if "messages" in body:
        contents = [expected_content(body, i) for i in range(n)]
        choices: list[dict[str, Any]] = [
            {
                "index": i,
                "message": {"role": "assistant", "content": c, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
            for i, c in enumerate(contents)
        ]
        obj = "chat.completion"
    else:
        count = len(input_texts(body.get("prompt", ""))) * n
        contents = [expected_content(body, i) for i in range(count)]
        choices = [
            {"text": c, "index": i, "logprobs": None, "finish_reason": "stop"}
            for i, c in enumerate(contents)
        ]
        obj = "text_completion"
    ctok = sum(count_tokens(c) for c in contents)
    usage: dict[str, Any] = {
        "prompt_tokens": ptok,
        "completion_tokens": ctok,
        "total_tokens": ptok + ctok,
    }
    if obj == "chat.completion":
        usage["prompt_tokens_details"] = {"cached_tokens": 0}
        usage["completion_tokens_details"] = {"reasoning_tokens": 0}
    return {"object": obj, "model": model, "choices": choices, "usage": usage}
