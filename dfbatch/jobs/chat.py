"""Chat completions: a template or a function per row -> request bodies -> parsed answers.

A template is text with fields (``"Summarize: {text}"``, ``"{price:.2f}"``): a field is a
column name, exactly as the column is named (``{a.b}`` is a column called "a.b", ``{0}`` an int
column 0), with an optional conversion (``!r``, ``!s``, ``!a``) and format spec (nested one
level: ``{n:>{width}}``). Nothing in a field is evaluated, unlike ``str.format``'s attribute
and index access, so a template cannot reach beyond the row's values. Every field is checked
against the frame before anything is sent; a value its format spec refuses fails its row.

``response_format`` asks for JSON (``"json_object"``, a JSON schema dict, or a pydantic model
class); the answer is then parsed, and JSON that does not parse (or does not validate) is that
row's error, not a crash.
"""

from __future__ import annotations

import json
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..engine.answers import check_chat
from ..engine.errors import ConfigurationError

ENDPOINT = "/chat/completions"

Prompt = str | Callable[[Any], Any]

# Models that take max_completion_tokens and refuse max_tokens.
_REASONING_PREFIXES = ("o1", "o3", "o4", "gpt-5")


#: The conversions a field may carry: all three only turn the value into text.
_CONVERSIONS: dict[str, Callable[[Any], str]] = {"r": repr, "s": str, "a": ascii}


@dataclass(frozen=True)
class Field:
    """One ``{...}`` of a template: a column name, a conversion (``!r``) and a format spec,
    whose own fields (``{n:{width}}``) are columns too."""

    name: str
    conversion: str | None
    spec: tuple[Piece, ...]
    text: str  # as written, for messages


#: Literal text, then the field that follows it (None at the end of the template).
Piece = tuple[str, Field | None]


class FieldFormatError(ValueError):
    """A row's value does not take the field's format spec: that row's error, not the run's."""


def parse_template(template: str) -> tuple[Piece, ...]:
    """The template as literal text and fields; ConfigurationError when it is not valid.

    A field is a column name, optionally a conversion (``!r``, ``!s``, ``!a``) and a format
    spec (``{n:>5}``, ``{price:.2f}``, or nested: ``{n:>{width}}``). The name is never
    evaluated: ``{text.upper}`` or ``{text[0]}`` name a column called exactly that.

    >>> [(lit, f and f.name) for lit, f in parse_template("Sum {a} {{x}} {n:>{w}}")]
    [('Sum ', 'a'), (' {x} ', 'n'), ('', None)]
    """
    try:
        return _parse(template, depth=0)
    except ConfigurationError:
        raise  # already says which field and why
    except ValueError as exc:  # string.Formatter's own: unmatched braces and the like
        raise ConfigurationError(
            f"prompt template is not valid: {exc}; write a literal brace as {{{{ or }}}}"
        ) from exc


def _parse(text: str, *, depth: int) -> tuple[Piece, ...]:
    pieces: list[Piece] = []
    literal = ""  # parse() splits literal text at each {{ and }}: join it back
    for text_part, name, spec, conversion in string.Formatter().parse(text):
        literal += text_part
        if name is None:
            continue
        written = (
            "{"
            + name
            + (f"!{conversion}" if conversion else "")
            + (f":{spec}" if spec else "")
            + "}"
        )
        if conversion is not None and conversion not in _CONVERSIONS:
            raise ConfigurationError(
                f"prompt field {written}: unknown conversion !{conversion}; use !r, !s or !a, "
                "or none"
            )
        nested = _parse(spec, depth=depth + 1) if spec and "{" in spec else ((spec or "", None),)
        if depth and any(f is not None for _, f in nested):
            raise ConfigurationError(
                f"prompt field {written}: a field inside a format spec cannot have fields of "
                "its own; one level of nesting ({n:>{width}}) is the most"
            )
        pieces.append((literal, Field(name, conversion, nested, written)))
        literal = ""
    pieces.append((literal, None))
    return tuple(pieces)


def _fields(pieces: tuple[Piece, ...]) -> list[Field]:
    out: list[Field] = []
    for _, field in pieces:
        if field is not None:
            out.append(field)
            out.extend(_fields(field.spec))
    return out


def template_fields(template: str) -> list[str]:
    """The column names a template uses, in order, each once (``{}`` is the empty name).

    >>> template_fields("Summarize {title}: {text!r} ({n:>{width}})")
    ['title', 'text', 'n', 'width']
    """
    return list(dict.fromkeys(f.name for f in _fields(parse_template(template))))


def check_template(template: str, columns: Sequence[Any]) -> list[str]:
    """Fail before any request unless every field of the template is a column of the frame."""
    return check_fields(template_fields(template), columns)


def check_fields(fields: list[str], columns: Sequence[Any], *, positional: Any = None) -> list[str]:
    """Fail before any request when a field is not a column of the frame; see
    :func:`resolve_fields`."""
    resolve_fields(fields, columns, positional=positional)
    return fields


def resolve_fields(
    fields: list[str], columns: Sequence[Any], *, positional: Any = None
) -> dict[str, int]:
    """Each field's column, by position: the column whose label, as text, is exactly the
    field's name (so a column named ``"a.b"`` is ``{a.b}``, an int column ``0`` is ``{0}``).
    With ``positional`` (a Series' own column), ``{}`` and ``{0}`` name that column.
    ConfigurationError, naming the field and the fix, when a field is no column or two.
    """
    labels = list(columns)
    by_name: dict[str, list[int]] = {}
    for j, label in enumerate(labels):
        by_name.setdefault(str(label), []).append(j)
    if positional is not None:
        where = [j for j, label in enumerate(labels) if label == positional]
        for name in ("", "0"):
            if name not in by_name or name == str(positional):
                by_name[name] = where
    out: dict[str, int] = {}
    for name in fields:
        found = by_name.get(name, [])
        if len(found) > 1:
            raise ConfigurationError(
                f"the prompt field {{{name}}} matches {len(found)} columns "
                f"({', '.join(repr(labels[j]) for j in found)}); rename the columns so that "
                "each name is unique"
            )
        if not found:
            raise _not_a_column(name, labels)
        out[name] = found[0]
    return out


def _not_a_column(name: str, labels: list[Any]) -> ConfigurationError:
    shown = ", ".join(repr(str(c)) for c in labels[:20]) + (", ..." if len(labels) > 20 else "")
    what = "a field is a column name, optionally with a format spec ({text}, {n:>5})"
    if name == "":
        return ConfigurationError(
            f"the prompt has an empty field {{}}, and the DataFrame has no column named '' "
            f"(columns: {shown}); {what}. Name a column, or write literal braces as {{{{ }}}}"
        )
    base = name.split(".")[0].split("[")[0]
    if base != name and base in {str(c) for c in labels}:
        return ConfigurationError(
            f"the prompt field {{{name}}} is not a column: {what}; attribute and index access "
            "(. and [ ]) are not evaluated. Put the value in a column first, or pass a "
            "function of the row as the prompt (lambda row: ...)"
        )
    return ConfigurationError(
        f"the prompt names column {name!r}, which the DataFrame does not have "
        f"(columns: {shown}); {what} that must equal a column name exactly. Fix the "
        "template, or escape literal braces as {{{{ }}}}"
    )


def render(pieces: tuple[Piece, ...], row: Mapping[str, Any]) -> str:
    """The template filled with ``row`` (field name -> value); no attribute or index lookup.

    Raises :class:`FieldFormatError` when a value does not take its field's format spec.

    >>> render(parse_template("{a!r} {n:>{w}}|"), {"a": "x", "n": 7, "w": 3})
    "'x'   7|"
    """
    out: list[str] = []
    for literal, field in pieces:
        out.append(literal)
        if field is None:
            continue
        value = row[field.name]
        spec = render(field.spec, row) if field.spec else ""
        try:
            if field.conversion is not None:
                value = _CONVERSIONS[field.conversion](value)
            out.append(format(value, spec))
        except Exception as exc:  # any __format__: one row's data, not the run's
            raise FieldFormatError(
                f"prompt field {field.text} cannot format this row's "
                f"{type(value).__name__} value: {exc}"
            ) from exc
    return "".join(out)


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
