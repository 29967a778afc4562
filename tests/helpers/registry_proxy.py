"""A loopback HTTP proxy in front of a real registry that behaves as registries in the field do at their worst.

:class:`RegistryProxy` forwards every request to the upstream registry (the ``Host`` header kept, so the
registry's upload ``Location`` URLs name the proxy) and streams both ways.  Faults a test sets, each on the
requests whose method and URL match (from the ``nth`` on, ``times`` of them, or all with ``times=None``):

- :meth:`answer`: an answer of its own (429 with ``Retry-After``, 503, 405 to PATCH...), the request never
  reaching the registry;
- :meth:`drop`: the connection closes without an answer, before the registry sees the request or, with
  ``taken``, after it took effect (the answer lost on the way back);
- :meth:`cut_body`: the answer's body stops after ``after`` bytes and the connection closes;
- :meth:`set_header`: an answer header replaced (a ``Docker-Content-Digest`` naming other bytes);
- ``redirect_blobs``: blob downloads redirect to a second origin standing in for blob storage (S3, a CDN),
  which serves them by a presigned-style URL and records any ``Authorization`` it is sent.

Every request the proxy receives is kept in :attr:`seen` (method, path with query, headers, the status it
answered, or None when it answered nothing) for assertions.  Only for tests: bodies stream, nothing is cached.
"""

from __future__ import annotations

import http.server
import itertools
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import requests

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-authorization", "proxy-connection", "te", "upgrade"}
_BLOCK = 64 << 10


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    status: int | None = None  # what the proxy answered; None: no answer (dropped)

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers.items() if k.lower() == name.lower()), None)


@dataclass
class _Rule:
    action: str  # answer, drop, cut, header
    method: str | None
    path: str
    nth: int
    times: int | None
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    taken: bool = False
    after: int = 0
    seen: int = 0

    def matches(self, method: str, path: str) -> bool:
        if (self.method is not None and method != self.method) or self.path not in path:
            return False
        self.seen += 1
        return self.seen >= self.nth and (self.times is None or self.seen < self.nth + self.times)


class _Reader:
    """``length`` bytes of a request body, read as the upstream request sends them (a length requests can see)."""

    def __init__(self, rfile: Any, length: int) -> None:
        self._rfile = rfile
        self._left = length
        self.len = length

    def __len__(self) -> int:
        return self.len

    def read(self, n: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        data: bytes = self._rfile.read(self._left if n < 0 else min(n, self._left))
        self._left -= len(data)
        return data


class RegistryProxy:
    """``host`` (127.0.0.1:PORT) forwards to ``upstream`` (HOST:PORT, plain HTTP); ``storage`` is the blob store's origin."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.seen: list[Seen] = []
        self.storage_seen: list[Seen] = []
        self.redirect_blobs = False
        self._rules: list[_Rule] = []
        self._lock = threading.Lock()
        self._keys: dict[str, tuple[str, str | None]] = {}  # presigned key -> (upstream path, Authorization)
        self._ids = itertools.count(1)
        self._session = requests.Session()
        self._session.trust_env = False
        proxy = self

        class Front(_Handler):
            def handle_request(self) -> None:
                proxy._front(self)

        class Storage(_Handler):
            def handle_request(self) -> None:
                proxy._storage(self)

        self._servers = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), cls) for cls in (Front, Storage)]
        for server in self._servers:
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, daemon=True).start()
        self.host = f"127.0.0.1:{self._servers[0].server_address[1]}"
        self.storage = f"127.0.0.1:{self._servers[1].server_address[1]}"

    def __enter__(self) -> RegistryProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self._session.close()

    # -- faults -----------------------------------------------------------------------------------
    def answer(
        self,
        status: int,
        method: str | None = None,
        path: str = "",
        *,
        nth: int = 1,
        times: int | None = 1,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer ``status`` (with ``headers``) without asking the registry."""
        self._add(_Rule("answer", method, path, nth, times, status=status, headers=headers or {}))

    def drop(
        self, method: str | None = None, path: str = "", *, nth: int = 1, times: int | None = 1, taken: bool = False
    ) -> None:
        """Close the connection without an answer; with ``taken``, after the registry took the request."""
        self._add(_Rule("drop", method, path, nth, times, taken=taken))

    def cut_body(self, path: str, after: int, *, method: str = "GET", nth: int = 1, times: int | None = 1) -> None:
        """Stop the answer's body after ``after`` bytes and close the connection."""
        self._add(_Rule("cut", method, path, nth, times, after=after))

    def set_header(self, path: str, name: str, value: str, *, method: str = "GET", times: int | None = None) -> None:
        """Replace an answer header (from the registry) with ``value``."""
        self._add(_Rule("header", method, path, 1, times, headers={name: value}))

    def _add(self, rule: _Rule) -> None:
        with self._lock:
            self._rules.append(rule)

    def _match(self, method: str, path: str) -> list[_Rule]:
        with self._lock:
            return [r for r in self._rules if r.matches(method, path)]

    def requests_to(self, method: str, path_part: str = "") -> list[Seen]:
        return [s for s in self.seen if s.method == method and path_part in s.path]

    # -- serving ----------------------------------------------------------------------------------
    def _front(self, h: _Handler) -> None:
        seen = Seen(h.command, h.path, dict(h.headers.items()))
        with self._lock:
            self.seen.append(seen)
        rules = self._match(h.command, h.path)
        acting = next((r for r in rules if r.action in ("answer", "drop") and not r.taken), None)
        if acting is not None:
            h.drain()
            if acting.action == "answer":
                seen.status = acting.status
                h.reply(acting.status, {"Content-Type": "application/json", **acting.headers}, b'{"errors":[]}')
            return  # dropped: the connection closes with no answer
        if self.redirect_blobs and h.command == "GET" and "/blobs/sha256:" in h.path:
            key = f"k{next(self._ids)}"
            with self._lock:
                self._keys[key] = (h.path, h.headers.get("Authorization"))
            seen.status = 307
            h.reply(307, {"Location": f"http://{self.storage}/blob/{key}?X-Amz-Signature=test"}, b"")
            return
        res = self._forward(h.command, h.path, h)
        with res:
            if any(r.action == "drop" for r in rules):
                for _ in res.iter_content(_BLOCK):
                    pass  # the registry's answer is read, and lost on the way back
                return
            replaced = {k: v for r in rules if r.action == "header" for k, v in r.headers.items()}
            cut = next((r.after for r in rules if r.action == "cut"), None)
            seen.status = res.status_code
            h.relay(res, replaced, cut)

    def _storage(self, h: _Handler) -> None:
        seen = Seen(h.command, h.path, dict(h.headers.items()))
        with self._lock:
            self.storage_seen.append(seen)
            found = self._keys.get(h.path.split("?")[0].rsplit("/", 1)[-1])
        if h.command != "GET" or found is None:
            seen.status = 403
            h.reply(403, {}, b"")
            return
        path, authorization = found
        headers = {"Authorization": authorization} if authorization else {}
        if h.headers.get("Range"):
            headers["Range"] = h.headers["Range"]
        res = self._session.get(f"http://{self.upstream}{path}", headers=headers, stream=True, timeout=60)
        with res:
            seen.status = res.status_code
            h.relay(res, {}, None)

    def _forward(self, method: str, path: str, h: _Handler) -> requests.Response:
        headers = {k: v for k, v in h.headers.items() if k.lower() not in _HOP_BY_HOP | {"content-length"}}
        data: Any = None
        if h.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b"".join(h.chunks())
        elif int(h.headers.get("Content-Length") or 0) > 0:
            data = _Reader(h.rfile, int(h.headers["Content-Length"]))
        elif method in ("PUT", "PATCH", "POST"):
            data = b""
        return self._session.request(
            method, f"http://{self.upstream}{path}", headers=headers, data=data, stream=True, timeout=300, allow_redirects=False
        )


class _Handler(http.server.BaseHTTPRequestHandler):
    """One connection per request (HTTP/1.0): a dropped or cut answer closes it, as a broken network does."""

    def handle_request(self) -> None:
        raise NotImplementedError

    def do_GET(self) -> None:
        self.handle_request()

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def log_message(self, *args: object) -> None:
        pass

    def drain(self) -> None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            for _ in self.chunks():
                pass
            return
        left = int(self.headers.get("Content-Length") or 0)
        while left > 0:
            block = self.rfile.read(min(left, _BLOCK))
            if not block:
                return
            left -= len(block)

    def chunks(self) -> Iterator[bytes]:
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                self.rfile.readline()
                return
            yield self.rfile.read(size)
            self.rfile.readline()

    def reply(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def relay(self, res: requests.Response, replaced: dict[str, str], cut: int | None) -> None:
        self.send_response(res.status_code)
        lowered = {k.lower() for k in replaced}
        for k, v in res.headers.items():
            if k.lower() not in _HOP_BY_HOP | lowered | {"date", "server"}:
                self.send_header(k, v)
        for k, v in replaced.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command == "HEAD":
            return
        sent = 0
        for block in res.raw.stream(_BLOCK, decode_content=False):
            if cut is not None and sent + len(block) >= cut:
                self.wfile.write(block[: cut - sent])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)  # the network breaks mid-body
                return
            self.wfile.write(block)
            sent += len(block)
