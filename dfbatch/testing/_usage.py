"""``Simulator(usage="tiktoken")``: usage counted the way OpenAI bills it, with tiktoken.

By default the simulator counts words (``count_tokens``): cheap, and close to a BPE count. With
``usage="tiktoken"`` the ``usage`` of every answer is what OpenAI would bill, so a client's
estimates and costs can be checked against it exactly:

- embeddings: the tiktoken tokens of each input, summed (cl100k_base);
- chat: 3 per message + the tokens of each of its string fields (+1 per ``name``) + 3 to prime
  the reply, with the model's encoding (o200k_base for gpt-4o*, gpt-4.1*, gpt-5*, o*);
- completions: each choice's content is cut to ``max_completion_tokens`` / ``max_tokens``
  (``finish_reason`` becomes ``"length"``), as a real model stops there, and counted.

Written here from OpenAI's cookbook rather than imported from dfbatch, so that a test comparing
the two checks one against the other. Needs tiktoken (imported on first use).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

_O200K_PREFIXES = ("gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4", "chatgpt-4o")


@lru_cache(maxsize=8)
def _encoding(name: str) -> Any:
    import tiktoken

    return tiktoken.get_encoding(name)


def encoding_for(model: str, *, embeddings: bool) -> Any:
    if not embeddings and model.lower().startswith(_O200K_PREFIXES):
        return _encoding("o200k_base")
    return _encoding("cl100k_base")


def text_tokens(text: str, encoding: Any) -> int:
    return len(encoding.encode_ordinary(text)) if text else 0


def embedding_tokens(texts: list[str], model: str) -> int:
    enc = encoding_for(model, embeddings=True)
    return sum(text_tokens(t, enc) for t in texts)


def _content_tokens(content: Any, enc: Any) -> int:
    if isinstance(content, str):
        return text_tokens(content, enc)
    if isinstance(content, list):
        return sum(
            text_tokens(str(p.get("text", "")), enc)
            for p in content
            if isinstance(p, dict) and p.get("type") == "text"
        )
    return 0


def chat_prompt_tokens(body: dict[str, Any]) -> int:
    enc = encoding_for(str(body.get("model", "")), embeddings=False)
    total = 3  # priming the reply: <|start|>assistant<|message|>
    for message in body.get("messages") or []:
        total += 3
        if not isinstance(message, dict):
            continue
        for key, value in message.items():
            if key == "content":
                total += _content_tokens(value, enc)
            elif isinstance(value, str):
                total += text_tokens(value, enc)
            if key == "name":
                total += 1
    return total


def bill(answer: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """``answer`` (from ``expected_completion``) with OpenAI's usage, choices cut at the cap."""
    chat = "messages" in body
    enc = encoding_for(str(body.get("model", "")), embeddings=False)
    cap = body.get("max_completion_tokens") or body.get("max_tokens")
    completion = 0
    for choice in answer["choices"]:
        holder = choice["message"] if chat else choice
        key = "content" if chat else "text"
        ids = enc.encode_ordinary(holder[key] or "")
        if cap is not None and len(ids) > int(cap):
            ids = ids[: int(cap)]
            holder[key] = enc.decode(ids)
            choice["finish_reason"] = "length"
        completion += len(ids)
    if chat:
        prompt = chat_prompt_tokens(body)
    else:
        prompt_value = body.get("prompt", "")
        prompts = [prompt_value] if isinstance(prompt_value, str) else prompt_value
        prompt = sum(text_tokens(p, enc) for p in prompts if isinstance(p, str))
    usage = dict(answer["usage"])
    usage.update(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )
    return {**answer, "usage": usage}
