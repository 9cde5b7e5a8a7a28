"""Where requests go and how they are signed: base URL, API key, Azure.

The API key lives in a :class:`Secret`, whose ``repr`` and ``str`` never show it, so it cannot
reach a log line, an exception, a cache key or a results file by accident. A server may still
echo it back ("Incorrect API key provided: sk-..."): :func:`redact` takes it out of whatever
the server said, where the engine turns an answer into an error.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit, urlunsplit

from . import constants as C
from .errors import ConfigurationError
from .types import ErrorInfo


class Secret:
    """A string that does not print.

    >>> Secret("sk-abc")
    Secret('********')
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __reduce__(self) -> None:  # type: ignore[override]
        raise TypeError("a Secret cannot be pickled")


REDACTED = "<redacted>"
#: Secrets shorter than this are not searched for (a one-letter "key" would mangle every text).
_MIN_SECRET = 6
_BEARER = re.compile(r"\b(bearer\s+)[^\s\"',;]{8,}", re.IGNORECASE)  # not "Bearer auth"
#: Request headers whose values are credentials.
_SECRET_HEADERS = frozenset({"authorization", "api-key", "proxy-authorization", "x-api-key"})


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with each secret and any ``Bearer`` token replaced by ``<redacted>``.

    >>> redact("Incorrect API key provided: sk-abc123; Bearer tok-98765", ["sk-abc123"])
    'Incorrect API key provided: <redacted>; Bearer <redacted>'
    """
    for secret in secrets:
        if len(secret) >= _MIN_SECRET:
            text = text.replace(secret, REDACTED)
    return _BEARER.sub(rf"\g<1>{REDACTED}", text)


def scrub_error(error: ErrorInfo, secrets: Iterable[str]) -> ErrorInfo:
    """``error`` with the secrets (and any Bearer token) taken out of every text in it: a
    server may echo the key ("Incorrect API key provided: sk-..."), and from where an error is
    made it goes to the error column, results files, log lines and exceptions."""
    secrets = tuple(secrets)

    def clean(text: str | None) -> str | None:
        return None if text is None else redact(text, secrets)

    return replace(
        error,
        code=clean(error.code),
        message=redact(error.message, secrets),
        type=clean(error.type),
        request_id=clean(error.request_id),
    )


def _check_key(key: str) -> None:
    """Refuse a key no HTTP header can carry (a typographic mark, a line break pasted with it),
    naming the character, never the key: sending it would raise a codec error whose text holds
    every header, the key included."""
    for i, c in enumerate(key):
        if not " " <= c <= "~":
            raise ConfigurationError(
                f"the API key holds a character an HTTP header cannot carry (U+{ord(c):04X} at "
                f"position {i + 1} of {len(key)}): copy the key again, without line breaks "
                "or typographic quotes and dashes"
            )


def redact_url(url: str) -> str:
    """The URL without any ``user:password@`` part, for messages and logs."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def check_url(url: str, what: str = "base_url") -> str:
    """``url`` with its scheme in lower case, or ConfigurationError saying what is wrong.

    The scheme is http or https in any case (``HTTP://`` too); the port, if any, is 1 to
    65535; there is a host; and there are no credentials (``user:password@``), which would
    not be sent (the API key goes in ``api_key``; a proxy's in ``HTTPS_PROXY``). Messages
    never show a password.

    >>> check_url("HTTPS://api.example.com/v1")
    'https://api.example.com/v1'
    """
    if not isinstance(url, str):
        raise ConfigurationError(f"{what} must be a URL (text), got {type(url).__name__}")
    try:
        parts = urlsplit(url)
        port = parts.port  # ValueError when not a number from 0 to 65535
    except ValueError as exc:
        raise ConfigurationError(
            f"{what} is not a valid URL ({exc}): {_redacted(url)!r}; give "
            "http(s)://host[:port]/path, with a port from 1 to 65535"
        ) from None
    if parts.scheme not in ("http", "https"):
        raise ConfigurationError(
            f"{what} must start with http:// or https://, got {_redacted(url)!r}"
        )
    if not parts.hostname:
        raise ConfigurationError(f"{what} has no host: {_redacted(url)!r}")
    if port == 0:
        raise ConfigurationError(
            f"{what} has port 0: {_redacted(url)!r}; give a port from 1 to 65535"
        )
    if parts.username is not None or parts.password is not None:
        raise ConfigurationError(
            f"{what} must not hold credentials (user:password@), which would not be sent: "
            f"{_redacted(url)!r}. Pass the API key as api_key= (--api-key) or "
            "OPENAI_API_KEY; a proxy's credentials go in HTTPS_PROXY"
        )
    return parts.scheme + url[len(parts.scheme) :]


def _redacted(url: str) -> str:
    """The URL without credentials, even one too broken for :func:`redact_url`."""
    try:
        return redact_url(url)
    except ValueError:
        scheme, sep, rest = url.partition("://")
        return scheme + sep + rest.rpartition("@")[2] if sep else url.rpartition("@")[2]


@dataclass(frozen=True, repr=False)
class ApiConfig:
    """The server to talk to.

    >>> cfg = ApiConfig.resolve(base_url="http://127.0.0.1:8000/v1", api_key="sk-test")
    >>> cfg.url("/embeddings")
    'http://127.0.0.1:8000/v1/embeddings'
    >>> "sk-test" in repr(cfg)
    False
    """

    base_url: str
    api_key: Secret | None = None
    #: Azure OpenAI: the ``api-version`` query parameter; also switches to the ``api-key`` header.
    api_version: str | None = None
    azure: bool = False
    extra_headers: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    @classmethod
    def resolve(
        cls,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        api_version: str | None = None,
        azure: bool | None = None,
        headers: dict[str, str] | None = None,
    ) -> ApiConfig:
        """Fill in from the environment like the openai SDK: OPENAI_BASE_URL, OPENAI_API_KEY.

        Raises :class:`ConfigurationError` when OpenAI itself is the server and no key is found.
        """
        base = (base_url or os.environ.get("OPENAI_BASE_URL") or C.DEFAULT_BASE_URL).rstrip("/")
        base = check_url(base, "base_url" if base_url else "OPENAI_BASE_URL")
        host = urlsplit(base).hostname or ""
        is_azure = (
            azure
            if azure is not None
            else (api_version is not None or host.endswith(".openai.azure.com"))
        )
        key = api_key or os.environ.get("OPENAI_API_KEY")
        if is_azure:
            key = key or os.environ.get("AZURE_OPENAI_API_KEY")
            api_version = api_version or os.environ.get("OPENAI_API_VERSION")
        if key:
            _check_key(key)
        if not key and host == "api.openai.com":
            raise ConfigurationError(
                "no API key: pass api_key=... or set the OPENAI_API_KEY environment variable "
                "(or point base_url at an OpenAI-compatible server that needs none)"
            )
        return cls(
            base_url=base,
            api_key=Secret(key) if key else None,
            api_version=api_version,
            azure=is_azure,
            extra_headers=tuple((headers or {}).items()),
        )

    def url(self, endpoint: str) -> str:
        """The full URL of an endpoint such as ``"/chat/completions"``."""
        if endpoint.startswith(("http://", "https://")):
            return endpoint
        url = f"{self.base_url}/{endpoint.lstrip('/')}"
        if self.api_version:
            url += ("&" if "?" in url else "?") + f"api-version={self.api_version}"
        return url

    def headers(self) -> dict[str, str]:
        """Request headers, the key included: hand these to the transport and nowhere else."""
        out = {"Content-Type": "application/json", "User-Agent": "dfbatch"}
        if self.api_key is not None:
            if self.azure:
                out["api-key"] = self.api_key.reveal()
            else:
                out["Authorization"] = f"Bearer {self.api_key.reveal()}"
        out.update(self.extra_headers)
        return out

    def secrets(self) -> tuple[str, ...]:
        """What :func:`redact` must take out of a server's words: the key and any credential
        among the extra headers."""
        found = [self.api_key.reveal()] if self.api_key is not None else []
        for name, value in self.extra_headers:
            if name.lower() in _SECRET_HEADERS:
                found += [value, value.split(None, 1)[-1]]  # "Bearer X": X alone too
        return tuple(found)

    def __repr__(self) -> str:
        key = "set" if self.api_key is not None else "none"
        azure = f", azure api_version={self.api_version!r}" if self.azure else ""
        return f"ApiConfig(base_url={redact_url(self.base_url)!r}, api_key={key}{azure})"
