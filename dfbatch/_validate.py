"""Is a 2xx answer what was asked? Every answer is checked before it counts, is cached or used.

The engine picks the check for a request's endpoint (:func:`answer_check`) and hands it to
:func:`dfbatch._retry.classify_response`: an answer the check refuses is that request's error
(retried only where asking again can help), never counted as a success, cached or placed on
a row. Checks are pure functions of the body sent and the parsed answer.

=====================  ==================================================================
endpoint               a valid answer
=====================  ==================================================================
every endpoint         JSON nested at most RESPONSE_MAX_DEPTH deep; ``usage`` absent, null,
                       or token counts that are integers in [0, USAGE_MAX_TOKENS]
``/embeddings``        :func:`dfbatch._embed.check_embeddings`: one vector per input index
                       at most, all of the length asked (``dimensions``, else the model's
                       own when known), every number finite (NaN or inf: retried)
``/chat/completions``  :func:`dfbatch._chat.check_chat`: ``n`` choices of text, or of the
                       tool calls (or audio) asked for; a refusal is the row's error
``/completions``       choices, each with a ``text`` string
=====================  ==================================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any
from urllib.parse import urlsplit

from ._chat import check_chat
from ._embed import check_embeddings
from ._retry import Check, InvalidAnswer, check_usage, quote


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


def check_completions(sent: Mapping[str, Any], response: Any) -> None:
    """A legacy ``/completions`` answer: choices, each with a ``text`` string.

    >>> check_completions({}, {"choices": [{"text": None}]})
    Traceback (most recent call last):
    dfbatch._retry.InvalidAnswer: a choice's text is not text: None
    """
    choices = response.get("choices") if isinstance(response, dict) else None
    if not isinstance(choices, list) or not choices:
        raise InvalidAnswer("no choices")
    for choice in choices:
        text = choice.get("text") if isinstance(choice, dict) else None
        if not isinstance(text, str):
            raise InvalidAnswer(f"a choice's text is not text: {quote(text)}")
    check_usage(response)
