"""What guards the page from the network and the network from the page: the host names it
answers to, the endpoints its document generator may send to, and what of their replies it shows.

A page on loopback is not only the owner's: a web page the owner visits can point a name of its
own at 127.0.0.1 (DNS rebinding) and drive the page from the owner's browser. Such a request
carries that name in its Host header, so the page answers only to its own names:
127.0.0.1, localhost and ::1 at its port, the --host it was given, IP addresses when it listens
on every interface (a rebinding page always uses a name), and the names the owner adds with
--allowed-host (a reverse proxy's public name).

A visitor types the document generator's endpoint, and the page posts to it: without the owner's
--allow-private-endpoints, a name that resolves to this machine, the private network or a
link-local address (a cloud's metadata service) is refused before any request. The name is
resolved once, here; one that resolves elsewhere a moment later is not caught. What an endpoint
answered (an error page, an unreadable reply) is cut out of the messages the page shows.
"""

import ipaddress
import re
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from builder.errors import UserError

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


# ---------------------------------------------------------------------------------------------
# The document generator's endpoint


def check_endpoint(url: str, allow_private: bool) -> None:
    """Refuse an endpoint whose host is, or resolves to, an address that is not public, unless
    the owner allowed that. An empty or non-http URL passes: faqgen says what to type."""
    import httpx

    url = (url or "").strip()
    if allow_private or not url.lower().startswith(("http://", "https://")):
        return
    try:  # parsed as faqgen's client will parse it
        parsed = httpx.URL(url.rstrip("/") + "/chat/completions")
    except httpx.InvalidURL:
        parsed = None
    if parsed is None or not parsed.host:
        raise UserError(f"{url[:100]}: 주소 형식이 아닙니다 / not a URL: give one such as "
                        "https://api.openai.com/v1")
    where = f"{parsed.scheme}://{parsed.host}"  # never a user:password@ typed into the URL
    try:
        found = socket.getaddrinfo(parsed.host, parsed.port or 443, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise UserError(f"{where}: 주소를 찾을 수 없습니다 / {parsed.host} cannot be resolved: "
                        "check the endpoint") from None
    for *_, address in found:
        ip = ipaddress.ip_address(address[0].split("%")[0])
        ip = getattr(ip, "ipv4_mapped", None) or ip  # ::ffff:127.0.0.1 is 127.0.0.1
        if not ip.is_global or ip.is_multicast:
            raise UserError(
                f"{where}: {ip} 은(는) 이 컴퓨터나 내부망의 주소입니다 / {ip} is a loopback, "
                "private or link-local address: the page sends no request there unless it was "
                "started with --allow-private-endpoints (for a local vLLM, Ollama or llama.cpp "
                "server); `builder generate` on the command line can use it")


NOT_SHOWN = "(응답 내용은 표시하지 않습니다 / the reply is not shown here)"
# faqgen's "URL answered HTTP 404 (hint) (tried 3 times): BODY", then, from the page's call,
# " [N of M chunks are saved in FOLDER; the same command continues from there]": the body is
# cut up to that last bracket (a body may imitate it: only the one that ends the message counts)
_HTTP_BODY = re.compile(r"(answered HTTP \d{3}[^:\n]*): .*?((?: \[\d+ of \d+ chunks are saved "
                        r"in [^\[\]\n]*; the same command continues from there\])?)$", re.DOTALL)
# faqgen's "no readable JSON in 3 replies (last: 'REPLY')", REPLY as Python writes a str
_LAST_REPLY = re.compile(r"\(last: (?:'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")\)")


def without_bodies(message: str) -> str:
    """A faqgen message or summary without what the endpoint answered: an internal service's
    page must not reach a visitor who pointed the generator at it."""
    message = _LAST_REPLY.sub(NOT_SHOWN, message)
    return _HTTP_BODY.sub(lambda m: f"{m[1]}: {NOT_SHOWN}{m[2]}", message)
