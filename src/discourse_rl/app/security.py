"""Who may talk to `discourse-rl serve`: the Host header check, the access token, draining.

* **Loopback** (127.0.0.1, ::1, localhost; the default): only this computer can connect. The
  Host header must name a loopback address, so a web page from elsewhere whose domain was made to
  resolve to 127.0.0.1 (DNS rebinding) cannot reach the API through the teacher's browser.
* **Any other address** needs an explicit `--allow-remote`: the server then makes an access token
  (or takes DISCOURSE_RL_TOKEN), prints it at start, and every `/api/` request must carry it
  (`Authorization: Bearer TOKEN`; the page reads it from the address `/#token=TOKEN`, which
  browsers never send to the server). The Host header must be one of the server's own names
  (the bound address, the machine's host names and addresses, `--allowed-host` values).

`Guard` is the ASGI middleware that applies these rules (400/421/401 as one line of JSON), counts
the requests in flight, and answers 503 with Retry-After while the server drains on SIGTERM.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import socket
import threading
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from discourse_rl.core.common import DiscourseRLError

TOKEN_ENV = "DISCOURSE_RL_TOKEN"
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_wildcard(host: str) -> bool:
    return host.strip("[]") in ("0.0.0.0", "::", "")


def machine_names(bind: str) -> set[str]:
    """The Host names a server bound to `bind` answers to without being told more."""
    names = {n.lower() for n in LOOPBACK_NAMES}
    if not _is_wildcard(bind):
        names.add(bind.strip("[]").lower())
        return names
    names.update(_interface_addresses())
    for name in {socket.gethostname(), socket.getfqdn()}:
        if not name:
            continue
        names.add(name.lower())
        try:
            for *_, addr in socket.getaddrinfo(name, None):
                names.add(str(addr[0]).lower())
        except OSError:
            pass
    return names


def _interface_addresses() -> set[str]:
    """This machine's addresses on its networks: the source address of a route out (a UDP
    "connect" sends nothing), for IPv4 and IPv6."""
    found = set()
    for family, probe in ((socket.AF_INET, "10.255.255.255"), (socket.AF_INET6, "fd00::1")):
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.connect((probe, 9))
                found.add(str(s.getsockname()[0]).lower())
        except OSError:
            pass
    return found


@dataclass
class Access:
    """The rules one server applies: the Host names it answers to and the token (if any)."""

    bind: str = "127.0.0.1"
    allowed_hosts: set[str] = field(default_factory=lambda: set(LOOPBACK_NAMES))
    token: str | None = None

    @property
    def remote(self) -> bool:
        return not is_loopback(self.bind)

    @classmethod
    def for_bind(
        cls,
        bind: str,
        allow_remote: bool = False,
        extra_hosts: Iterable[str] = (),
        token: str | None = None,
    ) -> Access:
        """The rules for `serve --host BIND`; one line of error for a non-loopback address
        without `--allow-remote`."""
        if is_loopback(bind):
            return cls(bind, {h.lower() for h in (*LOOPBACK_NAMES, *extra_hosts)}, token)
        if not allow_remote:
            raise DiscourseRLError(
                f"--host {bind} lets other computers reach the server: add --allow-remote "
                "(every API call then needs the access token printed at start)"
            )
        token = token or os.environ.get(TOKEN_ENV) or secrets.token_urlsafe(24)
        hosts = machine_names(bind) | {h.strip("[]").lower() for h in extra_hosts}
        return cls(bind, hosts, token)

    def host_ok(self, header: str | None) -> bool:
        if not header:
            return False
        host = header.strip().lower()
        if host.startswith("["):  # [::1]:8000
            host = host[1 : host.find("]")] if "]" in host else host
        elif host.count(":") == 1:
            host = host.split(":")[0]
        return host in self.allowed_hosts

    def token_ok(self, headers: dict[str, str]) -> bool:
        if self.token is None:
            return True
        auth = headers.get("authorization", "")
        given = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        given = given or headers.get("x-access-token", "")
        return bool(given) and secrets.compare_digest(given.encode(), self.token.encode())


class Gate:
    """A server's access rules and its requests in flight (shared with the SIGTERM handler)."""

    def __init__(self, access: Access) -> None:
        self.access = access
        self.in_flight = 0
        self.draining = False
        self._lock = threading.Lock()
        self.idle = threading.Event()
        self.idle.set()

    def enter(self) -> None:
        with self._lock:
            self.in_flight += 1
            self.idle.clear()

    def leave(self) -> None:
        with self._lock:
            self.in_flight -= 1
            if self.in_flight == 0:
                self.idle.set()


class Guard:
    """ASGI middleware: Host check, token check on /api/, in-flight count, 503 while draining."""

    def __init__(self, app: ASGIApp, gate: Gate) -> None:
        self.app = app
        self.gate = gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        access = self.gate.access
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        path: str = scope.get("path", "")
        if not access.host_ok(headers.get("host")):
            names = ", ".join(sorted(access.allowed_hosts))
            await _reply(send, 421, f"this server answers to the host names {names} only")
            return
        if self.gate.draining:
            await _reply(send, 503, "the server is shutting down", {"retry-after": "30"})
            return
        if path.startswith("/api/") and not access.token_ok(headers):
            await _reply(
                send,
                401,
                "this server needs its access token: open the address the server printed "
                "at start (ending in #token=...), or send Authorization: Bearer TOKEN",
                {"www-authenticate": "Bearer"},
            )
            return
        self.gate.enter()
        try:
            await self.app(scope, receive, send)
        finally:
            self.gate.leave()


async def _reply(
    send: Send, status: int, message: str, extra: dict[str, str] | None = None
) -> None:
    body = json.dumps({"error": message}).encode("utf-8")
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-content-type-options", b"nosniff"),
    ]
    if status == 503:
        headers.append((b"connection", b"close"))
    headers += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
