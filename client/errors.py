"""The exception types of tdet (torch-free; every area imports them from here).

Two kinds matter to whoever calls tdet:

- `UserError` (a ValueError): the input or the arguments are wrong. The CLI prints one line and exits 2;
  the served python steps answer INVALID_ARGUMENT (gRPC) / 400 (HTTP). Fix the input, do not retry.
- `InferenceError` and its subclasses: a request to the server failed, classified by the status the
  server (or the transport) gave, so callers can tell a bad image from a server that is down:

      InvalidInputError      INVALID_ARGUMENT / HTTP 4xx  the request or image is bad (also a UserError)
      ModelNotFoundError     NOT_FOUND / HTTP 404         no such model on that server (also a UserError)
      ServerError            INTERNAL / HTTP 5xx          a fault on the server side
      ServerUnavailableError UNAVAILABLE, refused, reset  the server is down or restarting (retried, bounded)
      RequestTimeoutError    DEADLINE_EXCEEDED, timeout   no answer within the client's request timeout
      WrongProtocolError     not HTTP / not HTTP/2        the port speaks the other protocol (also a UserError)

Anything else the CLI meets is a bug in tdet: it shows the traceback.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable


class UserError(ValueError):
    """Wrong input or arguments, described in the message; the CLI prints it as one line (exit 2)."""


def repeated(items: Iterable[Hashable]) -> list:
    """The entries listed more than once, sorted: the one check behind every "lists X more than once" UserError
    (one model, concurrency, server or file named twice, whose outputs would overwrite each other)."""
    return sorted(k for k, n in Counter(items).items() if n > 1)


class InvalidImageError(UserError):
    """Image bytes that cannot be used (empty, not an image, unsupported format, truncated, too small or
    too large); the served preprocess answers INVALID_ARGUMENT with this message."""


class InferenceError(Exception):
    """A request to the served model failed. `status` is the server's code as the transport gave it
    ("StatusCode.INVALID_ARGUMENT" for gRPC, "400" for HTTP, "" when no answer came)."""

    def __init__(self, message: str, *, status: str = "") -> None:
        super().__init__(message)
        self.status = status


class InvalidInputError(InferenceError, UserError):
    """INVALID_ARGUMENT / HTTP 4xx: the request or its image is wrong. Never retried."""


class ModelNotFoundError(InferenceError, UserError):
    """NOT_FOUND / HTTP 404: the server does not serve that model (or that version)."""


class ServerError(InferenceError):
    """INTERNAL / HTTP 5xx (other than 503): a fault on the server side, not in the request."""


class ServerUnavailableError(InferenceError, ConnectionError):
    """UNAVAILABLE, connection refused or reset, HTTP 503: the server is not there (after the client's
    bounded retries)."""


class RequestTimeoutError(InferenceError, TimeoutError):
    """No answer within the client's request timeout (gRPC DEADLINE_EXCEEDED, HTTP read timeout)."""


class WrongProtocolError(InferenceError, UserError):
    """The port answered, but not in the client's protocol: an HTTP client at the gRPC port or the reverse.
    Never retried."""


def train_extra_missing(what: str, missing: str = "torch", hint: str = "") -> UserError:
    """The one wording for a client-only install asked for something that needs torch: what, what is missing,
    the pip line (and a hint of what works without it)."""
    return UserError(f"{what} needs the train extra ({missing} not installed): pip install 'tdet[train]'"
                     + (f"; {hint}" if hint else ""))
