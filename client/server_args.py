"""The server arguments every command that talks to the server shares (--url, --protocol, --timeout,
--retries) and how a command finds its server: --url, $TDET_URL, the one detached `tdet serve`, the
local default port."""

from __future__ import annotations

import argparse
import os
from typing import Any

from .connection import DEFAULT_PORTS, DEFAULT_RETRIES, DEFAULT_TIMEOUT_S, PROTOCOLS, address_key, strip_scheme
from .errors import UserError


def positive(kind: type = int):
    """An argparse type: a number of `kind` > 0 (--concurrency 0 would send nothing, or hang)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") \
                from None
        if not value > 0:  # also refuses nan
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    parse.__name__ = f"positive {kind.__name__}"  # argparse names the type in its own errors
    return parse


def add_connection_args(p: argparse.ArgumentParser, *, retries: int = DEFAULT_RETRIES) -> None:
    """--timeout and --retries, the same on every command that talks to the server."""
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS", help="request timeout")
    p.add_argument("--retries", type=int, default=retries, metavar="N",
                   help="retries with backoff when the server is unavailable, never for a bad request")


def add_url_args(p: argparse.ArgumentParser) -> None:
    """--url and --protocol, the same on every command that talks to one server."""
    p.add_argument("--url", help="server host:port (default: $TDET_URL, else the one server `tdet serve --detach` "
                                 f"runs, else 127.0.0.1:{DEFAULT_PORTS['grpc']} for gRPC, "
                                 f"127.0.0.1:{DEFAULT_PORTS['http']} for HTTP); infer, eval and loadtest take "
                                 "several, comma-separated (a:8001,b:8001), and spread requests over them "
                                 "(infer and eval go on without a server that is down)")
    p.add_argument("--protocol", choices=PROTOCOLS, default="grpc", help="transport")


def detached_server() -> Any:
    """The one running `tdet serve --detach` server's record (an ensembles.server.ServerInfo), None if none
    runs; UserError listing them when several run (which one is meant cannot be guessed)."""
    from tdet.ensembles.server import running_servers  # torch-free, like the rest of client/

    servers = [info for _, info in running_servers()]
    if len(servers) > 1:
        listing = "; ".join(f"gRPC {s.grpc_url} / HTTP {s.http_url} ({s.repository})" for s in servers)
        raise UserError(f"{len(servers)} detached servers are running: {listing}; choose one with --url or TDET_URL")
    return servers[0] if servers else None


def server_url(args: argparse.Namespace, *, single: str = "") -> str:
    """--url, else $TDET_URL, else the port for --protocol of the one detached server, else the local default
    port for --protocol (an HTTP client on the gRPC port fails obscurely). single: the command's name when it
    talks to one server only (a comma-separated list is then refused, naming it)."""
    if args.url or os.environ.get("TDET_URL"):
        url = args.url or os.environ["TDET_URL"]
        if single and "," in url:
            raise UserError(f"{single} measures one server, but --url {url!r} lists {len(url.split(','))}: pass one "
                            "(infer, eval and loadtest spread over several)")
        return url
    info = detached_server()
    if info is not None:
        return info.grpc_url if args.protocol == "grpc" else info.http_url
    return f"127.0.0.1:{DEFAULT_PORTS[args.protocol]}"


def metrics_url(args: argparse.Namespace) -> str | None:
    """--metrics-url, else $TDET_METRICS_URL, else the metrics of the detached server that --url / $TDET_URL
    names (its gRPC or HTTP address), or of the one detached server when neither is set; None: the default
    from the server's host (client.loadtest.runner)."""
    if args.metrics_url is not None:
        return args.metrics_url
    if os.environ.get("TDET_METRICS_URL") is not None:
        return os.environ["TDET_METRICS_URL"]
    url = args.url or os.environ.get("TDET_URL")
    if url:
        return _detached_metrics_of(url)
    info = detached_server()
    return info.metrics_url if info is not None else None


def _detached_metrics_of(url: str) -> str | None:
    """The metrics URL of the detached `tdet serve` whose gRPC or HTTP port `url` is (its metrics port is
    seldom 8002 when it was started with --metrics-port 0), None for any other server."""
    from tdet.ensembles.server import running_servers

    if "," in url:  # several servers: one metrics endpoint cannot describe them (the runner skips it)
        return None
    key = address_key(strip_scheme(url))
    return next((info.metrics_url for _, info in running_servers()
                 if key in (address_key(info.grpc_url), address_key(info.http_url))), None)
