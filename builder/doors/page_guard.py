"""What guards the page from the network: the host names it answers to.

A page on loopback is not only the owner's: a web page the owner visits can point a name of its
own at 127.0.0.1 (DNS rebinding) and drive the page from the owner's browser. Such a request
carries that name in its Host header, so the page answers only to its own names:
127.0.0.1, localhost and ::1 at its port, the --host it was given, IP addresses when it listens
on every interface (a rebinding page always uses a name), and the names the owner adds with
--allowed-host (a reverse proxy's public name).
"""

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
WILDCARDS = ("", "0.0.0.0", "::")  # listening on every interface


def _name_and_port(host: str) -> tuple[str, int | None] | None:
    """("name", port or None) of a Host header (name, name:port, [v6]:port); None if malformed."""
    try:
        parts = urlsplit("//" + host)
        name, port = parts.hostname, parts.port
    except ValueError:
        return None
    return (name, port) if name else None


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class HostNames:
    """The host names a page on `bound`:`port` answers to (`extra`: --allowed-host values)."""

    bound: str
    port: int
    extra: tuple[str, ...] = ()

    def allows(self, host: str) -> bool:
        parsed = _name_and_port(host.strip().lower())
        if parsed is None:
            return False
        name, port = parsed
        for allowed in self.extra:  # a name without a port: any port (behind a proxy)
            wanted = _name_and_port(allowed.strip().lower())
            if wanted and wanted[0] == name and wanted[1] in (None, port):
                return True
        # a browser leaves the port out of the Host header for the scheme's default
        if port != self.port and not (port is None and self.port in (80, 443)):
            return False
        own = {*LOOPBACK_NAMES, self.bound.lower().strip("[]")}
        return name in own or (self.bound in WILDCARDS and _is_ip(name))

    def shown(self) -> str:
        """The addresses to name in the refusal."""
        names = [n for n in (*LOOPBACK_NAMES[:2], self.bound) if n not in WILDCARDS]
        return ", ".join(dict.fromkeys(f"{n}:{self.port}" for n in names))


class HostCheck:
    """ASGI middleware: 421 for a request whose Host header is not one of the page's names."""

    def __init__(self, app, names: HostNames):
        self.app, self.names = app, names

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
        if self.names.allows(host):
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 1008})
        body = self.refusal(host).encode()
        await send({"type": "http.response.start", "status": 421,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    def refusal(self, host: str) -> str:
        shown = host[:100] or "(no Host header)"
        return (f"{shown}: 이 페이지의 주소가 아닙니다 / this page does not answer to that host "
                f"name; it answers at {self.names.shown()}. Start it with --allowed-host NAME to "
                "add the name a reverse proxy or the network uses.\n")
