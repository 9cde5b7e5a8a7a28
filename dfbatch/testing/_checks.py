"""Request checks and OpenAI-shaped errors for the simulator.

Every error body has OpenAI's shape::

    >>> json.loads(error_response(404, "nope", code="model_not_found").body)["error"]
    {'message': 'nope', 'type': 'invalid_request_error', 'param': None, 'code': 'model_not_found'}
    >>> check_embeddings({"input": ""}, "text-embedding-3-small")
    Traceback (most recent call last):
    ...
    dfbatch.testing._checks.ApiError: '$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Collection
from typing import Any

from aiohttp import web

from ._answers import EMBEDDING_DIMENSIONS, count_tokens, input_texts, prompt_tokens

__all__ = [
    "ApiError",
    "check_auth",
    "check_embeddings",
    "check_generation",
    "check_model",
    "context_length",
    "error_response",
    "is_embedding_model",
    "json_response",
    "new_request_id",
]

MAX_INPUTS = 2048
MAX_INPUT_TOKENS = 8191
MAX_REQUEST_TOKENS = 300_000
LIMITS_URL = "Visit https://platform.openai.com/account/rate-limits to learn more."
_INVALID_INPUT = "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference."
BAD_JSON = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
    "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
    "sent was not valid JSON.)"
)
_BAD_KEY = (
    "Incorrect API key provided. You can find your API key at "
    "https://platform.openai.com/account/api-keys."
)
_NO_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization "
    "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
)
QUOTA_MESSAGE = "You exceeded your current quota, please check your plan and billing details."
_CONTEXT = {
    "gpt-4o": 128_000,
    "gpt-4.1": 1_047_576,
    "gpt-5": 400_000,
    "gpt-3.5-turbo": 16_385,
    "o3": 200_000,
    "o4": 200_000,
}


def new_request_id() -> str:
    """``req_`` and 32 hex digits, like OpenAI's ``x-request-id``."""
    return "req_" + secrets.token_hex(16)


def is_embedding_model(model: str) -> bool:
    """Known embedding models, and any model whose name contains "embed"."""
    return model in EMBEDDING_DIMENSIONS or "embed" in model


def context_length(model: str) -> int:
    """The chat model's context window (128,000 for models not in the table)."""
    for prefix, size in _CONTEXT.items():
        if model.startswith(prefix):
            return size
    return 128_000


class ApiError(Exception):
    """An OpenAI error answer, raised by the request checks."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = (
            status,
            message,
            type,
            param,
            code,
        )

    def response(self, headers: dict[str, str] | None = None) -> web.Response:
        """This error as an HTTP response."""
        return error_response(
            self.status,
            self.message,
            type=self.type,
            param=self.param,
            code=self.code,
            headers=headers,
        )


def json_response(
    obj: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """A compact JSON response."""
    return web.Response(
        body=json.dumps(obj, separators=(",", ":")).encode(),
        status=status,
        headers=headers,
        content_type="application/json",
    )


def error_response(
    status: int,
    message: str,
    *,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """``{"error": {"message", "type", "param", "code"}}`` with ``status``."""
    err = {"message": message, "type": type, "param": param, "code": code}
    return json_response({"error": err}, status, headers)


def _positive_int(body: dict[str, Any], name: str, upper: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if (
        not isinstance(value, int)
        or isinstance(value, bool)
        or value < 1
        or (upper and value > upper)
    ):
        bound = f" and at most {upper}" if upper else ""
        raise ApiError(
            400,
            f"Invalid '{name}': expected an integer of at least 1{bound}, got {value!r}.",
            param=name,
            code="invalid_value",
        )
    return value


def check_auth(request: web.Request, expected: str | None) -> None:
    """Raise 401 unless ``request`` carries ``expected`` (Bearer or api-key header)."""
    if expected is None:
        return
    auth = request.headers.get("Authorization", "")
    key = auth[7:].strip() if auth[:7].lower() == "bearer " else request.headers.get("api-key", "")
    if not key:
        raise ApiError(401, _NO_KEY, code="invalid_api_key")
    if not secrets.compare_digest(key.encode(), expected.encode()):
        raise ApiError(401, _BAD_KEY, code="invalid_api_key")


def check_model(body: dict[str, Any], deployment: str | None, models: Collection[str]) -> str:
    """The served model: the Azure deployment, else ``body["model"]`` (400 missing, 404 unknown)."""
    if deployment is not None:
        if deployment not in models:
            raise ApiError(
                404,
                "The API deployment for this resource does not exist. If you "
                "created the deployment within the last 5 minutes, please wait a "
                "moment and try again.",
                code="DeploymentNotFound",
            )
        body["model"] = deployment
        return deployment
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "you must provide a model parameter", param="model")
    if model not in models:
        raise ApiError(
            404,
            f"The model `{model}` does not exist or you do not have access to it.",
            code="model_not_found",
        )
    return model


def check_embeddings(body: dict[str, Any], model: str) -> tuple[list[str], int | None, str, int]:
    """Validate an embeddings request: its texts, dimensions, encoding format and tokens."""
    if not is_embedding_model(model):
        raise ApiError(400, f"The model `{model}` does not support embeddings.", param="model")
    if "input" not in body:
        raise ApiError(400, "Missing required parameter: 'input'.", param="input")
    try:
        texts = input_texts(body["input"])
    except TypeError:
        raise ApiError(400, _INVALID_INPUT) from None
    if not texts or "" in texts:
        raise ApiError(400, _INVALID_INPUT)
    if len(texts) > MAX_INPUTS:
        raise ApiError(
            400,
            f"Too many inputs: {len(texts)}. The max number of inputs is {MAX_INPUTS}.",
            param="input",
        )
    counts = [count_tokens(t) for t in texts]
    longest = max(counts)
    if longest > MAX_INPUT_TOKENS:
        raise ApiError(
            400,
            f"This model's maximum context length is {MAX_INPUT_TOKENS + 1} "
            f"tokens, however you requested {longest} tokens ({longest} in your "
            "prompt; 0 for the completion). Please reduce your prompt; or "
            "completion length.",
        )
    total = sum(counts)
    if total > MAX_REQUEST_TOKENS:
        raise ApiError(
            400,
            f"Requested {total} tokens, max {MAX_REQUEST_TOKENS} tokens per request",
            param="input",
            code="max_tokens_per_request",
        )
    native = EMBEDDING_DIMENSIONS.get(model)
    dims = _positive_int(body, "dimensions", native)
    if dims is not None and model == "text-embedding-ada-002":
        raise ApiError(
            400, "This model does not support specifying dimensions.", param="dimensions"
        )
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise ApiError(
            400,
            f"Invalid value for 'encoding_format': {fmt!r}. Supported values "
            "are: 'float' and 'base64'.",
            param="encoding_format",
            code="invalid_value",
        )
    return texts, dims, fmt, total


def check_generation(body: dict[str, Any], model: str, *, chat: bool) -> None:
    """Validate a chat (``chat=True``) or legacy completions request."""
    path = "v1/chat/completions" if chat else "v1/completions"
    if is_embedding_model(model):
        raise ApiError(
            404,
            f"This is not a chat model and thus not supported in the {path} endpoint.",
            param="model",
        )
    _positive_int(body, "n", 128)
    _positive_int(body, "max_tokens")
    _positive_int(body, "max_completion_tokens")
    if not chat:
        try:
            prompts = input_texts(body.get("prompt"))
        except TypeError:
            raise ApiError(
                400, "Invalid 'prompt': expected a string or a list.", param="prompt"
            ) from None
        if not prompts:
            raise ApiError(400, "Invalid 'prompt': empty list.", param="prompt")
        return
    messages = body.get("messages")
    if messages is None:
        raise ApiError(400, "Missing required parameter: 'messages'.", param="messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, f"Invalid 'messages': {messages!r} is too short.", param="messages")
    if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
        raise ApiError(400, "Invalid 'messages': each message needs a 'role'.", param="messages")
    fmt = body.get("response_format")
    if fmt is not None:
        kind = fmt.get("type") if isinstance(fmt, dict) else None
        if kind not in ("text", "json_object", "json_schema"):
            raise ApiError(
                400,
                "Invalid 'response_format.type': expected 'text', 'json_object' or 'json_schema'.",
                param="response_format",
                code="invalid_value",
            )
        if kind == "json_schema" and not isinstance(fmt.get("json_schema"), dict):
            raise ApiError(
                400,
                "Missing required parameter: 'response_format.json_schema'.",
                param="response_format.json_schema",
                code="missing_required_parameter",
            )
    tokens, limit = prompt_tokens(body), context_length(model)
    if tokens > limit:
        raise ApiError(
            400,
            f"This model's maximum context length is {limit} tokens. However, "
            f"your messages resulted in {tokens} tokens. Please reduce the length "
            "of the messages.",
            param="messages",
            code="context_length_exceeded",
        )
