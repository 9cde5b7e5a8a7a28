"""Chat completions: a template or a function per row -> request bodies -> parsed answers.

A template is ``str.format`` text naming columns (``"Summarize: {text}"``); every name is
checked against the frame before anything is sent. ``response_format`` asks for JSON
(``"json_object"``, a JSON schema dict, or a pydantic model class); the answer is then parsed,
and JSON that does not parse (or does not validate) is that row's error, not a crash.
"""

from __future__ import annotations

import json
import string
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ._errors import ConfigurationError
from ._retry import InvalidAnswer, check_usage, quote

ENDPOINT = "/chat/completions"

Prompt = str | Callable[[Any], Any]

# Models that take max_completion_tokens and refuse max_tokens.
_REASONING_PREFIXES = ("o1", "o3", "o4", "gpt-5")


def template_fields(template: str) -> list[str]:
    """The column names a template uses, in order (``{}`` counts as the empty name).

    >>> template_fields("Summarize {title}: {text!r} ({n:>3})")
    ['title', 'text', 'n']
    """
    names: list[str] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigurationError(f"prompt template is not valid: {exc}") from exc
    for _, name, _, _ in parsed:
        if name is None:
            continue
        base = name.split(".")[0].split("[")[0]
        if base not in names:
            names.append(base)
    return names


def check_template(template: str, columns: Sequence[Any]) -> list[str]:
    """Fail before any request when the template names a column the frame lacks."""
    return check_fields(template_fields(template), columns)


def check_fields(fields: list[str], columns: Sequence[Any]) -> list[str]:
    """Fail before any request when a field is not a column of the frame."""
    available = {str(c) for c in columns}
    missing = [f for f in fields if f not in available]
    if missing:
        shown = ", ".join(repr(c) for c in list(available)[:20])
        raise ConfigurationError(
            f"the prompt names column {missing[0]!r}, which the DataFrame does not have "
            f"(columns: {shown}); fix the template, or escape literal braces as {{{{ }}}}"
        )
    return fields


def response_format_spec(response_format: Any) -> tuple[dict[str, Any] | None, Any]:
    """The API's ``response_format`` value, and the pydantic model to validate with (if any)."""
    if response_format is None:
        return None, None
    if response_format in ("json_object", "json"):
        return {"type": "json_object"}, None
    if isinstance(response_format, Mapping):
        if response_format.get("type") in ("json_object", "json_schema", "text"):
            return dict(response_format), None
        # A bare JSON schema.
        schema = dict(response_format)
        return {
            "type": "json_schema",
            "json_schema": {"name": "row", "schema": schema, "strict": False},
        }, None
    if isinstance(response_format, type) and hasattr(response_format, "model_json_schema"):
        schema = _strict_schema(response_format.model_json_schema())
        spec = {
            "type": "json_schema",
            "json_schema": {"name": response_format.__name__, "schema": schema, "strict": True},
        }
        return spec, response_format
    raise ConfigurationError(
        "response_format must be 'json_object', a JSON schema dict, a full response_format "
        f"dict, or a pydantic model class; got {type(response_format).__name__}"
    )


def _strict_schema(schema: Any) -> Any:
    """OpenAI's strict mode wants every object closed and every property required."""
    if isinstance(schema, dict):
        out = {k: _strict_schema(v) for k, v in schema.items()}
        if out.get("type") == "object" and "properties" in out:
            out["additionalProperties"] = False
            out["required"] = list(out["properties"])
        out.pop("default", None)
        return out
    if isinstance(schema, list):
        return [_strict_schema(v) for v in schema]
    return schema


def build_body(
    messages: list[dict[str, Any]],
    *,
    model: str,
    max_tokens: int | None,
    temperature: float | None,
    response_format: dict[str, Any] | None,
    n: int,
    extra: Mapping[str, Any] | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": messages}
    if max_tokens is not None:
        key = "max_completion_tokens" if model.startswith(_REASONING_PREFIXES) else "max_tokens"
        body[key] = max_tokens
    if temperature is not None:
        body["temperature"] = temperature
    if response_format is not None:
        body["response_format"] = response_format
    if n != 1:
        body["n"] = n
    if extra:
        body.update(extra)
    return body


def to_messages(prompt_value: Any, system: str | None) -> list[dict[str, Any]]:
    """A row's prompt (text or a messages list) as chat messages, the system prompt first."""
    if isinstance(prompt_value, str):
        messages: list[dict[str, Any]] = [{"role": "user", "content": prompt_value}]
    elif isinstance(prompt_value, list) and all(isinstance(m, Mapping) for m in prompt_value):
        messages = [dict(m) for m in prompt_value]
    else:
        raise TypeError(
            f"a prompt function must return a string or a list of message dicts, "
            f"got {type(prompt_value).__name__}"
        )
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    return messages


def parse_choice(content: Any, *, wants_json: bool, model_cls: Any) -> Any:
    """One choice's value: the text, or the parsed JSON (validated by a pydantic model)."""
    if not wants_json:
        return content
    if not isinstance(content, str):
        raise ValueError("the model returned no content to parse as JSON")
    try:
        value = json.loads(content)
    except ValueError as exc:
        raise ValueError(f"the model returned invalid JSON ({exc.msg} at char {exc.pos})") from exc
    if model_cls is not None:
        try:
            return model_cls.model_validate(value).model_dump(mode="json")
        except Exception as exc:  # pydantic.ValidationError, without importing pydantic
            raise ValueError(
                f"the model's JSON does not match {model_cls.__name__}: {exc}"
            ) from exc
    return value


def check_chat(sent: Mapping[str, Any], response: Any) -> None:
    """Raise InvalidAnswer unless ``response`` is a chat completion answering the body
    ``sent``: ``n`` choices, indexed 0 to n-1 once each, each a message whose content is text,
    or null with the tool calls (or audio) the request asked for; and a valid ``usage``.
    A refusal is the request's error (code ``refusal``), quoting what the model said.

    >>> check_chat({}, {"choices": [{"message": {"content": None, "refusal": "No."}}]})
    Traceback (most recent call last):
    dfbatch._retry.InvalidAnswer: the model refused: 'No.'
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


def parse_response(
    response: Any,
    *,
    n: int,
    wants_json: bool,
    model_cls: Any,
    sent: Mapping[str, Any] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """The row's value (a list when ``n > 1``) and its usage; ValueError when unusable.

    The answer is checked first (:func:`check_chat` against the body ``sent``). A message
    with tool calls (or audio) the request asked for, and no content, has those as its value.
    """
    check_chat({"n": n} if sent is None else sent, response)
    by_index: dict[int, Any] = {}
    finish: list[Any] = []
    for pos, choice in enumerate(response["choices"]):
        message = choice["message"]
        content = message.get("content")
        if content is None:
            value = message.get("tool_calls") or message.get("function_call")
            by_index[choice.get("index", pos)] = value or message.get("audio")
        else:
            by_index[choice.get("index", pos)] = parse_choice(
                content, wants_json=wants_json, model_cls=model_cls
            )
        finish.append(choice.get("finish_reason"))
    values = [by_index[i] for i in sorted(by_index)]
    usage = response.get("usage") or {}
    info = {
        "prompt_tokens": usage.get("prompt_tokens"),
        "completion_tokens": usage.get("completion_tokens"),
        "finish_reason": finish[0] if n == 1 else finish,
    }
    return (values if n > 1 else values[0]), info
