"""A fake Spotler Activate API on loopback, for the tests, the demo and the benchmarks.

It answers POST /v1/track and POST /v1/verifyAuth as Spotler does; state.py judges every event
by its own rules (rules.py, not the project's validator), records what it accepted, and injects
the faults in `Faults` on demand.
Admin endpoints under /_fake/ let a test or an operator read the record and change the faults.
Standard library only: the server must not share code paths with the real client it tests.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import signal
import socket
import socketserver
import sys
import threading
import traceback
from collections.abc import Callable
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, NamedTuple, cast
from urllib.parse import parse_qs

from spotler_outbox.worker.fake_spotler.faults import Faults, Reply
from spotler_outbox.worker.fake_spotler.state import FakeSpotler

__all__ = ["FakeSpotler", "Faults", "Reply", "RunningFakeApi", "run_fake_api", "start_fake_api"]

MAX_BODY_BYTES = 32 * 1024 * 1024


class _Request(NamedTuple):
    headers: Message
    query: dict[str, str]
    body: bytes
    sleep: Callable[[float], object]


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body) if body.strip() else {}
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"the body is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ValueError(f"the body must be a JSON object, got {type(doc).__name__}")
    return doc


def _set_faults(state: FakeSpotler, request: _Request) -> Reply:
    faults = Faults.from_dict(_json_object(request.body))
    state.set_faults(faults)
    return Reply(200, faults.to_dict())


def _set_credentials(state: FakeSpotler, request: _Request) -> Reply:
    doc = _json_object(request.body)
    if set(doc) != {"account", "api_key"}:
        raise ValueError('the body must be {"account": ..., "api_key": ...} and nothing else')
    state.set_credentials(doc["account"], doc["api_key"])
    return Reply(200, {"account": doc["account"]})


def _set_accounts(state: FakeSpotler, request: _Request) -> Reply:
    doc = _json_object(request.body)
    state.set_accounts(doc)
    return Reply(200, {"accounts": sorted(doc)})


def _events(state: FakeSpotler, request: _Request) -> Reply:
    if "orderid" not in request.query:
        raise ValueError("the orderid query parameter is required")
    return Reply(200, state.events_for(request.query["orderid"]))


def _reset(state: FakeSpotler, request: _Request) -> Reply:
    state.reset()
    return Reply(200, {"reset": True})


def _track(state: FakeSpotler, request: _Request) -> Reply:
    headers = request.headers
    return state.track(headers.get("X-AUTH-ACCOUNT"), headers.get("X-AUTH-APIKEY"),
                       request.body, request.sleep)


def _verify_auth(state: FakeSpotler, request: _Request) -> Reply:
    return state.verify_auth(request.headers.get("X-AUTH-ACCOUNT"),
                             request.headers.get("X-AUTH-APIKEY"))


_Route = Callable[[FakeSpotler, _Request], Reply]
_ROUTES: dict[tuple[str, str], _Route] = {
    ("POST", "/v1/track"): _track,
    ("POST", "/v1/verifyAuth"): _verify_auth,
    ("GET", "/_fake/received"): lambda state, _: Reply(200, state.received()),
    ("GET", "/_fake/received_by_account"):
        lambda state, _: Reply(200, state.received_by_account()),
    ("GET", "/_fake/events"): _events,
    ("GET", "/_fake/requests"): lambda state, _: Reply(200, state.request_log()),
    ("GET", "/_fake/faults"): lambda state, _: Reply(200, state.faults.to_dict()),
    ("POST", "/_fake/faults"): _set_faults,
    ("POST", "/_fake/credentials"): _set_credentials,
    ("POST", "/_fake/accounts"): _set_accounts,
    ("POST", "/_fake/reset"): _reset,
}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the real client's Session expects
    # Without TCP_NODELAY the header and body writes meet the client's delayed ACK: 40 ms a request.
    disable_nagle_algorithm = True
    server_version = "FakeSpotler/1.0"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: a line per request would swamp the benchmarks and could carry secrets."""

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        server = cast(_Server, self.server)
        body = self._read_body()
        if isinstance(body, Reply):
            # The unread body would be taken for the next request: close this connection instead.
            self.close_connection = True
            self._send(Reply(body.status, body.body, {"Connection": "close"}))
            return
        path, _, query = self.path.partition("?")
        route = _ROUTES.get((method, path.rstrip("/") or "/"))
        if route is None:
            self._send(Reply(404, {"error": f"no such endpoint: {method} {path}"}))
            return
        params = {k: v[0] for k, v in parse_qs(query).items()} if query else {}
        try:
            reply = route(server.state, _Request(self.headers, params, body, server.stopping.wait))
        except ValueError as exc:
            reply = Reply(400, {"error": str(exc)})
        except Exception as exc:  # a bug in the fake must not pass for a Spotler outage silently
            traceback.print_exc()
            reply = Reply(500, {"error": f"internal error in the fake API: {type(exc).__name__}"})
        self._send(reply)

    def _read_body(self) -> bytes | Reply:
        """The request body, or the error to answer when it cannot be read."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return Reply(411, {"error": "send a Content-Length; chunked bodies are not supported"})
        raw = self.headers.get("Content-Length", "0")
        length = int(raw) if raw.isascii() and raw.isdigit() else -1
        if length < 0:
            return Reply(400, {"error": "the Content-Length header is not a number"})
        if length > MAX_BODY_BYTES:
            return Reply(413, {"error": f"the body is over {MAX_BODY_BYTES} bytes"})
        return self.rfile.read(length)

    def _send(self, reply: Reply) -> None:
        data = json.dumps(reply.body, separators=(",", ":")).encode()
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if not reply.trickle_seconds:
            self.wfile.write(data)
            return
        self.close_connection = True
        completed = False
        try:
            self.wfile.flush()
            pause = reply.trickle_seconds / len(data)
            stopping = cast(_Server, self.server).stopping
            for index in range(len(data)):
                if stopping.wait(pause):
                    return
                self.wfile.write(data[index:index + 1])
                self.wfile.flush()
            completed = True
        except OSError:
            return  # the client hung up: that is what the fault is there to show
        finally:
            if reply.on_sent is not None:
                reply.on_sent(completed)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024  # benchmarks open many connections at once

    def __init__(self, host: str, port: int, state: FakeSpotler) -> None:
        family, address = _loopback_address(host, port)
        self.address_family = family
        self.state = state
        self.stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would call getfqdn(), a reverse DNS lookup that can take seconds.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    @property
    def url(self) -> str:
        host = str(self.server_address[0])
        return f"http://[{host}]:{self.server_port}" if ":" in host else f"http://{host}:{self.server_port}"

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out and hung up is a scenario under test, not an error.
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)

    def close_everything(self) -> None:
        """Wake sleeping handlers, cut idle keep-alive connections: a stop is a real outage."""
        self.stopping.set()
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        self.server_close()


def _loopback_address(host: str, port: int) -> tuple[socket.AddressFamily, Any]:
    """Resolve `host`, refusing anything but loopback: the fake must never be reachable."""
    if not host:
        raise ValueError("refusing to bind the fake Spotler API to all interfaces; use 127.0.0.1")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ValueError(f"cannot resolve host {host!r}: {exc}") from exc
    for info in infos:
        if not ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback:
            raise ValueError(f"refusing to bind the fake Spotler API to {host!r}: "
                             "it is not a loopback address and the fake must never be exposed")
    infos.sort(key=lambda info: info[0] != socket.AF_INET)  # IPv4 first: it is always there
    return infos[0][0], infos[0][4]


class RunningFakeApi:
    """A fake serving in a background thread; stop() it, or use it as a context manager."""

    def __init__(self, server: _Server, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        self.url = server.url
        self.state = server.state

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.close_everything()

    def __enter__(self) -> RunningFakeApi:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_fake_api(
    host: str = "127.0.0.1", port: int = 0, *, account: str = "demo-account",
    api_key: str = "demo-key", faults: Faults | None = None,
    accounts: dict[str, str] | None = None, account_field: str | None = None,
) -> RunningFakeApi:
    """Serve in a daemon thread; port 0 picks a free port, read it from `.url`.

    `accounts` ({"<account id>": "<api key>"}) serves several accounts instead of one;
    `account_field` names the event field that says which account an event belongs to.
    """
    state = FakeSpotler(account, api_key, faults, account_field=account_field)
    if accounts:
        state.set_accounts(accounts)
    server = _Server(host, port, state)
    # A short poll interval keeps stop() quick: every test fixture pays it at teardown.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              name=f"fake-spotler-{server.server_port}", daemon=True)
    thread.start()
    return RunningFakeApi(server, thread)


def run_fake_api(
    host: str = "127.0.0.1", port: int = 0, *, account: str = "demo-account",
    api_key: str = "demo-key", faults: Faults | None = None,
    announce: Callable[[str], None] | None = None, accounts: dict[str, str] | None = None,
) -> None:
    """Serve in the foreground until Ctrl-C or SIGTERM; says its URL once, through `announce`.
    `accounts` ({"<account id>": "<api key>"}) are served beside `account`."""
    state = FakeSpotler(account, api_key, faults)
    if accounts:
        state.set_accounts({account: api_key, **accounts})
    server = _Server(host, port, state)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler) if in_main_thread else None
    try:
        message = f"Fake Spotler API listening on {server.url} (account {account}; Ctrl-C stops)"
        if announce is None:
            print(message, flush=True)
        else:
            announce(server.url)
        server.serve_forever()
    except KeyboardInterrupt:  # SIGTERM raises it too: see default_int_handler above
        pass
    finally:
        server.close_everything()
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
