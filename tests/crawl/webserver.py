"""A real HTTP server on a loopback address (127.0.0.1 unless told; ephemeral port) for the crawler tests and
the crawler benchmark.

It serves real pages (readability `source.html` files from ../shared/data/real, a few of their <img> pointed
at the server's real photos, the others at missing images) and real photos, plus faulty endpoints:

  /index.html                 links to every page, a robots-disallowed page, a 404
  /pages/<name>.html          real pages          /photos/<file>        real photos
  /robots.txt                 Disallow: /private/ (and an optional Crawl-delay)
  /fault/slow                 answers after `slow_s` (past the crawler's read timeout)
  /fault/flaky                500 on the first request, then a page
  /fault/ratelimit            429 with Retry-After: 1 on the first request, then a page
  /fault/loop-a, loop-b       a redirect loop      /fault/hop/<n>        redirects to hop n+1 forever
  /fault/big, /fault/bigstream a body over the cap (with, without Content-Length); /fault/big.jpg an image one
  /fault/html-image.jpg       HTML at an image URL /fault/truncated.jpg  a truncated JPEG (real file)
  /fault/noai.jpg             a photo with X-Robots-Tag: noai
  /fault/text.txt             text/plain          /fault/to-private      302 to http://10.0.0.1/
  /fault/to-ftp               302 to ftp://        /fault/cookie.html     sets a cookie
Everything else is a 404. `robots_txt` replaces the robots.txt body; `routes` ({path: Route}) are served
before all of the above. Every request is logged (monotonic time, path, headers; `Hit.host` is the Host
header) in `server.log`.
"""

from __future__ import annotations

import mimetypes
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@dataclass
class Hit:
    t: float
    path: str
    headers: dict[str, str]

    @property
    def host(self) -> str:
        return self.headers.get("host", "")


@dataclass
class Route:
    """A fixed answer: status, body, content type and extra headers (e.g. Location)."""

    status: int = 200
    body: bytes = b"<!doctype html><html><head><title>page</title></head><body><p>a page</p></body></html>"
    ctype: str = "text/html; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Site:
    pages: dict[str, bytes] = field(default_factory=dict)  # /pages/<name>.html -> body
    photos: dict[str, bytes] = field(default_factory=dict)  # /photos/<file> -> bytes
    page_photos: dict[str, list[str]] = field(default_factory=dict)  # page path -> photo paths it shows
    truncated: bytes = b""


_IMG_SRC = re.compile(rb"""(<img\b[^>]*?\bsrc\s*=\s*)(["'])(.*?)\2""", re.IGNORECASE | re.DOTALL)


def load_site(real: Path, n_pages: int = 12, photos_per_page: int = 2) -> Site:
    """Real pages and photos from ../shared/data/real/dev, pages rewritten to show the server's photos."""
    site = Site()
    photo_files = sorted(
        p
        for p in (real / "dev" / "images" / "photos").iterdir()
        if p.suffix.lower() in (".jpg", ".png", ".webp", ".gif")
    )
    for p in photo_files:
        site.photos[f"/photos/{p.name}"] = p.read_bytes()
    photo_paths = list(site.photos)
    site.truncated = (real / "dev" / "images" / "edge_cases" / "skimage__truncated.jpg").read_bytes()
    dirs = sorted(d for d in (real / "dev" / "html" / "readability").iterdir() if (d / "source.html").exists())
    k = 0
    for d in dirs[:n_pages]:
        html = (d / "source.html").read_bytes()
        path = f"/pages/{d.name}.html"
        shown: list[str] = []
        counter = {"n": 0}

        def rewrite(m: re.Match) -> bytes:
            nonlocal k
            i = counter["n"]
            counter["n"] += 1
            if i < photos_per_page:
                target = photo_paths[k % len(photo_paths)]
                k += 1
                shown.append(target)
            else:
                target = "/photos/missing.jpg"  # one shared 404, so tests stay quick
            return m.group(1) + m.group(2) + target.encode() + m.group(2)

        html = _IMG_SRC.sub(rewrite, html)
        if not shown:  # a page without <img>: give it one, after <body>
            target = photo_paths[k % len(photo_paths)]
            k += 1
            shown.append(target)
            tag = f'<p><img src="{target}" alt="photo"></p>'.encode()
            html, n = re.subn(rb"(<body[^>]*>)", lambda m: m.group(1) + tag, html, count=1, flags=re.IGNORECASE)
            if n == 0:
                html = tag + html
        site.pages[path] = html
        site.page_photos[path] = shown
    return site


class TestServer:
    """ThreadingHTTPServer in a daemon thread; `url(path)`, `log`, `hits(path)`, `close()`."""

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        site: Site,
        crawl_delay: float | str | None = None,
        slow_s: float = 3.0,
        big_bytes: int = 3_000_000,
        host: str = "127.0.0.1",
        robots_txt: str | None = None,
        routes: dict[str, Route] | None = None,
    ):
        self.site = site
        self.crawl_delay = crawl_delay
        self.host = host
        self.robots_txt = robots_txt
        self.routes = routes or {}
        self.slow_s = slow_s
        self.big_bytes = big_bytes
        self.log: list[Hit] = []
        self._lock = threading.Lock()
        self._seen: dict[str, int] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):  # noqa: N802
                with server._lock:
                    server.log.append(Hit(time.monotonic(), self.path, {k.lower(): v for k, v in self.headers.items()}))
                    n = server._seen.get(self.path, 0)
                    server._seen[self.path] = n + 1
                route = server.routes.get(self.path)
                if route is not None:
                    return server._send(self, route.status, route.body, route.ctype, route.headers)
                server.handle(self, self.path.split("?", 1)[0], n)

        class QuietServer(ThreadingHTTPServer):
            def handle_error(self, request, client_address):  # clients abort on purpose (size cap, timeout)
                pass

        self.httpd = QuietServer((host, 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    # ---- helpers for tests ------------------------------------------------------------------------------
    def url(self, path: str, host: str | None = None) -> str:
        """URL of `path` on this server, under `host` (a name or address that reaches it) or its address."""
        return f"http://{host or self.host}:{self.port}{path}"

    def hits(self, path: str | None = None) -> list[Hit]:
        with self._lock:
            return [h for h in self.log if path is None or h.path == path]

    def reset(self) -> None:
        with self._lock:
            self.log.clear()
            self._seen.clear()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def index_html(self) -> bytes:
        links = [*self.site.pages, "/private/secret.html", "/fault/notfound.html"]
        items = "".join(f'<li><a href="{p}">{p}</a></li>' for p in links)
        return f"<!doctype html><html><head><title>index</title></head><body><ul>{items}</ul></body></html>".encode()

    # ---- routes -------------------------------------------------------------------------------------------
    @staticmethod
    def _send(
        h: BaseHTTPRequestHandler,
        status: int,
        body: bytes,
        ctype: str = "text/html; charset=utf-8",
        headers: dict[str, str] | None = None,
    ) -> None:
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        try:
            h.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def handle(self, h: BaseHTTPRequestHandler, path: str, n: int) -> None:
        page = b"<!doctype html><html><head><title>ok</title></head><body><p>recovered page</p></body></html>"
        send = self._send
        if path == "/robots.txt" and self.robots_txt is not None:
            return send(h, 200, self.robots_txt.encode(), "text/plain")
        if path == "/robots.txt":
            body = "User-agent: *\nDisallow: /private/\n"
            if self.crawl_delay is not None:
                body += f"Crawl-delay: {self.crawl_delay}\n"
            return send(h, 200, body.encode(), "text/plain")
        if path == "/index.html":
            return send(h, 200, self.index_html())
        if path in self.site.pages:
            return send(h, 200, self.site.pages[path])
        if path in self.site.photos:
            ctype = mimetypes.guess_type(path)[0] or "application/octet-stream"
            return send(h, 200, self.site.photos[path], ctype)
        if path == "/private/secret.html":
            return send(h, 200, b"<html><body>secret</body></html>")
        if path == "/fault/slow":
            time.sleep(self.slow_s)
            return send(h, 200, page)
        if path == "/fault/flaky":
            return send(h, 500, b"oops") if n == 0 else send(h, 200, page)
        if path == "/fault/ratelimit":
            return send(h, 429, b"slow down", headers={"Retry-After": "1"}) if n == 0 else send(h, 200, page)
        if path == "/fault/loop-a":
            return send(h, 302, b"", headers={"Location": "/fault/loop-b"})
        if path == "/fault/loop-b":
            return send(h, 302, b"", headers={"Location": "/fault/loop-a"})
        if path.startswith("/fault/hop/"):
            k = int(path.rsplit("/", 1)[1])
            return send(h, 302, b"", headers={"Location": f"/fault/hop/{k + 1}"})
        if path == "/fault/big":
            return send(h, 200, b"<html>" + b"x" * self.big_bytes)
        if path == "/fault/bigstream":  # no Content-Length: the client must count and abort
            h.send_response(200)
            h.send_header("Content-Type", "text/html")
            h.send_header("Connection", "close")
            h.end_headers()
            try:
                for _ in range(self.big_bytes // 65536 + 1):
                    h.wfile.write(b"y" * 65536)
            except (BrokenPipeError, ConnectionResetError):
                pass
            h.close_connection = True
            return None
        if path == "/fault/big.jpg":
            return send(h, 200, b"\xff\xd8\xff" + b"z" * self.big_bytes, "image/jpeg")
        if path == "/fault/html-image.jpg":
            return send(h, 200, b"<!doctype html><html><body>not an image</body></html>")
        if path == "/fault/html-as-jpeg.jpg":  # lies about its type
            return send(h, 200, b"<!doctype html><html><body>not an image</body></html>", "image/jpeg")
        if path == "/fault/truncated.jpg":
            return send(h, 200, self.site.truncated, "image/jpeg")
        if path == "/fault/noai.jpg":
            return send(h, 200, next(iter(self.site.photos.values())), "image/jpeg", {"X-Robots-Tag": "noai"})
        if path == "/fault/text.txt":
            return send(h, 200, b"plain text", "text/plain")
        if path == "/fault/to-private":
            return send(h, 302, b"", headers={"Location": "http://10.0.0.1/"})
        if path == "/fault/to-ftp":
            return send(h, 302, b"", headers={"Location": "ftp://127.0.0.1/file"})
        if path == "/fault/cookie.html":
            return send(h, 200, page, headers={"Set-Cookie": "session=secret; Path=/"})
        return send(h, 404, b"<html><body>not found</body></html>")
