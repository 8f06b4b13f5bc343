"""How the client names a server and classifies its failures: the protocols and default ports, and the
mapping from a gRPC status / HTTP code / socket failure to the error types of tdet.client.errors (no
tritonclient import: the failures are inspected by name)."""

from __future__ import annotations

from .errors import (
    InferenceError,
    InvalidInputError,
    ModelNotFoundError,
    RequestTimeoutError,
    ServerError,
    ServerUnavailableError,
    UserError,
    WrongProtocolError,
)

PROTOCOLS = ("grpc", "http")
DEFAULT_PORTS = {"grpc": 8001, "http": 8000}
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_RETRIES = 2
DEFAULT_BACKOFF_S = 0.5  # first wait; doubles per retry (0.5 s, 1 s, 2 s, ...), with 25% jitter


# gRPC status names -> error types (the rest, INTERNAL and UNKNOWN included, are server faults)
_GRPC_STATUS = {"INVALID_ARGUMENT": InvalidInputError, "OUT_OF_RANGE": InvalidInputError,
                "RESOURCE_EXHAUSTED": InvalidInputError,  # a request over the message size limit
                "NOT_FOUND": ModelNotFoundError, "UNAVAILABLE": ServerUnavailableError,
                "DEADLINE_EXCEEDED": RequestTimeoutError}
_HTTP_STATUS = {404: ModelNotFoundError, 408: RequestTimeoutError, 503: ServerUnavailableError,
                504: RequestTimeoutError}


def classify(status: str | None, message: str) -> InferenceError:
    """The error type for a server answer: `status` as tritonclient gives it ("StatusCode.X" for gRPC,
    "400" for HTTP, None when the failure was on the client side)."""
    status = status or ""
    name = status.removeprefix("StatusCode.")
    if name.isdigit():
        code = int(name)
        cls = _HTTP_STATUS.get(code) or (InvalidInputError if 400 <= code < 500 else ServerError)
    elif name:
        cls = _GRPC_STATUS.get(name, ServerError)
    else:
        cls = InferenceError
    return cls(message, status=status)


def wrong_protocol(url: str, protocol: str) -> WrongProtocolError:
    """The port at `url` answered in the other protocol than `protocol`: say so, and what to use."""
    other = "grpc" if protocol == "http" else "http"
    names = {"http": "HTTP", "grpc": "gRPC"}
    return WrongProtocolError(f"{protocol}://{url} did not answer {names[protocol]}: is it the {names[other]} "
                              f"port? use --protocol {other} or the {names[protocol]} port "
                              f"(default {DEFAULT_PORTS[protocol]})")


# what the gRPC client says when an HTTP/1 server (Triton's HTTP port) answers (some gRPC versions; others
# only say "Socket closed", hence speaks_http)
GRPC_AT_HTTP = ("http1.x server", "Trying to connect an http1")


def speaks_http(url: str, timeout_s: float) -> bool:
    """Whether `url` answers a plain HTTP/1 request: asked when a gRPC client could not connect, to tell
    Triton's HTTP port (gRPC only reports "Socket closed") from a server that is down."""
    import http.client

    host, _, port = url.rpartition(":")
    conn = http.client.HTTPConnection(host or url, int(port) if port.isdigit() else None, timeout=timeout_s)
    try:
        conn.request("GET", "/v2/health/live")
        conn.getresponse()
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()
    return True


def transport_error(err: BaseException, message: str) -> InferenceError | None:
    """A socket-level failure (HTTP client: refused, reset, closed mid-answer, read timeout) as an error
    type; None for anything that is not a transport failure (a bug: let it propagate)."""
    if type(err).__name__ == "HTTPParseError":  # an answer that is not HTTP: most likely Triton's gRPC port
        return WrongProtocolError(message)
    if isinstance(err, TimeoutError):  # socket.timeout is TimeoutError
        return RequestTimeoutError(message)
    if isinstance(err, OSError):
        return ServerUnavailableError(message)
    if type(err).__module__.startswith("geventhttpclient"):  # HTTPConnectionClosed / HTTPParseError
        return ServerUnavailableError(message)
    return None


SCHEMES = {"grpc://": "grpc", "http://": "http", "https://": "http"}


def strip_scheme(url: str, protocol: str | None = None) -> str:
    """'grpc://h:8001/' -> 'h:8001', checked: a host and a numeric port (gRPC would otherwise go to 443 and HTTP to
    80, and a typo would read as a server that is down), and a scheme that agrees with `protocol` when given.
    UserError naming the URL otherwise."""
    text = url.strip()
    scheme = next((s for s in SCHEMES if text.lower().startswith(s)), "")
    address = text[len(scheme):].rstrip("/")
    if scheme and protocol and SCHEMES[scheme] != protocol:
        raise UserError(f"--url {url!r} is a {SCHEMES[scheme]} URL but the protocol is {protocol}: pass --protocol "
                        f"{SCHEMES[scheme]}, or give the {protocol} port")
    host, _, port = address.rpartition(":")
    if not host or host == "[]" or "/" in address:
        raise UserError(f"--url {url!r}: give the server as host:port (e.g. 127.0.0.1:{DEFAULT_PORTS['grpc']} for "
                        f"gRPC, 127.0.0.1:{DEFAULT_PORTS['http']} for HTTP)")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"--url {url!r}: the port {port!r} is not a number from 1 to 65535")
    return address


def address_key(address: str) -> str:
    """The same server however it is written (case, localhost), for finding one listed twice."""
    host, _, port = address.lower().rpartition(":")
    return f"{'127.0.0.1' if host in ('localhost', '[::1]') else host}:{int(port)}"
