"""One polite, safe GET with everything around it: scheme and address checks, robots.txt, per-host
politeness (slots of a `HostGate` keyed by host name and resolved address, taken for every hop and
retry), retries with exponential backoff and jitter (Retry-After honoured), manual redirects with loop
detection (each hop checked again), a streamed size cap, a content-type check, and WARC archiving of every
response read (request and response records).

`Fetcher.fetch(url, kind)` returns a `Fetched` (final 2xx response of the expected kind) or a `Failed`
(drop reason + detail). Reasons: bad_scheme, bad_url, credentials_in_url, unsafe_address, dns_error,
robots, robots_unreachable, crawl_delay_too_long, timeout, connect_error, http_<code> (4xx), http_429,
http_5xx, too_large, not_html, not_an_image (decided by the image fetcher), redirect_loop,
too_many_redirects, bad_redirect, bad_content_encoding.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urljoin, urlsplit

import httpx

from corpus.stats import Ledger
from crawl.live.config import CrawlConfig
from crawl.live.politeness import GateClient, HostGate, politeness_keys
from crawl.live.robots import RobotsCache, RobotsRules, origin_of
from crawl.live.safety import AddressPolicy, DnsFailure, UnsafeAddress, host_key, make_client, url_problem
from crawl.live.warc_writer import RotatingWarcWriter

Kind = Literal["page", "image", "robots"]
ACCEPT = {
    "page": "text/html,application/xhtml+xml;q=0.9,*/*;q=0.1",
    "image": "image/avif,image/webp,image/png,image/jpeg,image/*;q=0.8",
    "robots": "text/plain,*/*;q=0.1",
}


@dataclass
class Exchange:
    """One request and its response as received (payload with its content-encoding), ready for WARC."""

    url: str
    method: str
    target: str
    request_headers: list[tuple[str, str]]
    status: int
    reason: str
    http_version: str
    response_headers: list[tuple[str, str]]
    payload: bytes
    date: str
    ip: str | None
    warc: str = ""  # set once archived
    record_id: str = ""

    def archive(self, writer: RotatingWarcWriter) -> None:
        self.warc, self.record_id = writer.write_exchange(
            self.url,
            method=self.method,
            target=self.target,
            request_headers=self.request_headers,
            status=self.status,
            reason=self.reason,
            http_version=self.http_version,
            response_headers=self.response_headers,
            payload=self.payload,
            date=self.date,
            ip=self.ip,
        )


# Where exchanges go: None = archive at once; a list = the caller archives them later, together with the
# state entry of the URL (so a URL's records and its done-mark land in the same WARC file).
Sink = list[Exchange] | None


@dataclass
class Fetched:
    url: str  # the URL asked for
    final_url: str  # after redirects
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes  # content-encoding removed
    fetched_at: str  # ISO 8601, WARC-Date of the response record
    exchange: Exchange | None = None  # the final request/response, as archived (or to be archived)
    redirects: list[str] = field(default_factory=list)

    @property
    def warc(self) -> str:
        return self.exchange.warc if self.exchange else ""

    @property
    def record_id(self) -> str:
        return self.exchange.record_id if self.exchange else ""

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()


@dataclass
class Failed:
    url: str
    reason: str
    detail: str = ""
    retryable: bool = False
    retry_after: float | None = None


def _now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date), None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def decode_body(raw: bytes, encoding: str, cap: int) -> bytes | str:
    """Remove a content-encoding (identity, gzip, deflate), never inflating past `cap`; reason on failure."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return raw
    if encoding not in ("gzip", "x-gzip", "deflate"):
        return "bad_content_encoding"
    try:
        d = zlib.decompressobj(47)  # gzip or zlib header
        out = d.decompress(raw, cap + 1)
    except zlib.error:
        return "bad_content_encoding"
    return "too_large" if len(out) > cap else out


def _status_reason(status: int) -> str:
    if status == 429:
        return "http_429"
    if status >= 500:
        return "http_5xx"
    return f"http_{status}"


class Fetcher:
    """Async fetch core shared by the crawler and the image fetcher (one per actor, one event loop).

    `gate`: the run's `HostGateActor` handle, shared by all actors; None: a `HostGate` of this fetcher alone.
    `holder`: this fetcher's name at the gate (its slots are given back by name if its actor dies)."""

    def __init__(
        self,
        cfg: CrawlConfig,
        warc: RotatingWarcWriter | None,
        ledger: Ledger,
        stage: str,
        gate: Any = None,
        holder: str = "",
    ):
        self.cfg = cfg
        self.warc = warc
        self.ledger = ledger
        self.stage = stage
        self.policy = AddressPolicy(cfg.allow_private)
        self.gate = GateClient(
            gate if gate is not None else HostGate(cfg.min_delay_s, cfg.per_host_concurrency), holder
        )
        self.robots = RobotsCache(self._shared_robots, cfg.user_agent, on_new=self._new_rules)
        self._client: httpx.AsyncClient | None = None
        self._rng = random.Random()

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:  # created lazily, inside the event loop that uses it
            self._client = make_client(self.cfg, self.policy)
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # ---- robots ------------------------------------------------------------------------------------
    async def _shared_robots(self, robots_url: str) -> tuple[int, bytes]:
        """robots.txt as the gate has it; fetched here when this fetcher is the first to ask."""
        origin = origin_of(robots_url)
        known = await self.gate.robots(origin)
        if known is not None:
            return known
        answer: tuple[int, bytes] = (0, b"")  # what the others get if this fetch fails unexpectedly
        try:
            answer = await self._fetch_robots(robots_url)
        finally:
            await self.gate.robots_done(origin, *answer)
        return answer

    async def _fetch_robots(self, robots_url: str) -> tuple[int, bytes]:
        got = await self._follow(robots_url, "robots", check_robots=False)
        self.ledger.counters[f"{self.stage}/robots_fetch"] += 1
        if isinstance(got, Fetched):
            return got.status, got.body
        if got.reason.startswith("http_"):
            code = got.reason[5:]
            return (int(code) if code.isdigit() else 500), b""
        return 0, b""

    async def _new_rules(self, origin: str, rules: RobotsRules) -> None:
        """Once per origin: count ignored Crawl-delay values, raise the host's gap to its Crawl-delay."""
        if rules.bad_crawl_delay:
            self.ledger.counters[f"{self.stage}/robots_bad_crawl_delay"] += rules.bad_crawl_delay
        if rules.crawl_delay is not None and rules.crawl_delay <= self.cfg.max_crawl_delay_s:
            await self.gate.set_delay(host_key(origin), rules.crawl_delay)

    async def robots_allowed(self, url: str) -> str | None:
        """None when `url` may be fetched, else the drop reason."""
        rules = await self.robots.rules(url)
        if rules.disallow_all:
            return "robots_unreachable"
        if rules.crawl_delay is not None and rules.crawl_delay > self.cfg.max_crawl_delay_s:
            return "crawl_delay_too_long"  # never waited for: the host is skipped
        return None if rules.allowed(url, self.cfg.user_agent) else "robots"

    # ---- the fetch -----------------------------------------------------------------------------------
    async def fetch(self, url: str, kind: Kind, sink: Sink = None) -> Fetched | Failed:
        """Fetch `url` (following redirects); its exchanges are archived at once or appended to `sink`."""
        return await self._follow(url, kind, check_robots=True, sink=sink)

    async def _follow(self, url: str, kind: Kind, check_robots: bool, sink: Sink = None) -> Fetched | Failed:
        chain: list[str] = []
        current = url
        for _ in range(self.cfg.max_redirects + 1):
            problem = url_problem(current)
            if problem:
                return Failed(url, problem, current)
            if current in chain:
                return Failed(url, "redirect_loop", " -> ".join(chain + [current]))
            chain.append(current)
            parts = urlsplit(current)
            default_port = 443 if parts.scheme.lower() == "https" else 80
            port = parts.port or default_port
            try:  # refuse before any connection (the transport checks again when it connects)
                addresses = await self.policy.resolve(parts.hostname or "", port)
            except (UnsafeAddress, DnsFailure) as e:
                return Failed(url, e.reason, str(e))
            if check_robots:
                refused = await self.robots_allowed(current)
                if refused:
                    return Failed(url, refused, current)
            keys = politeness_keys(host_key(current), addresses, port, port == default_port)
            got = await self._get_with_retries(current, kind, sink, keys)
            if isinstance(got, Failed):
                got.url = url
                return got
            if 300 <= got.status < 400 and got.status != 304:
                location = got.headers.get("location")
                if not location:
                    return Failed(url, "bad_redirect", f"{current}: {got.status} without Location")
                current = urljoin(current, location.strip()).split("#", 1)[0]
                continue
            got.url, got.redirects = url, chain[:-1]
            if not 200 <= got.status < 300:
                return Failed(url, _status_reason(got.status), current)
            return got
        return Failed(url, "too_many_redirects", " -> ".join(chain))

    async def _get_with_retries(self, url: str, kind: Kind, sink: Sink, keys: list[str]) -> Fetched | Failed:
        attempts = self.cfg.retries + 1
        for attempt in range(attempts):
            async with self.gate.slot(keys):
                try:
                    got = await asyncio.wait_for(self._get_once(url, kind, sink), self.cfg.total_timeout_s)
                except (TimeoutError, httpx.TimeoutException):
                    got = Failed(url, "timeout", url, retryable=True)
                except (UnsafeAddress, DnsFailure) as e:
                    got = Failed(url, e.reason, str(e))
                except httpx.TransportError as e:
                    got = Failed(url, "connect_error", f"{type(e).__name__}: {e}", retryable=True)
            if isinstance(got, Fetched):
                if got.status != 429 and got.status < 500:
                    return got
                retry_after = parse_retry_after(got.headers.get("retry-after"))
                got = Failed(url, _status_reason(got.status), url, retryable=True, retry_after=retry_after)
            if not got.retryable or attempt == attempts - 1:
                return got
            if got.retry_after is not None:
                if got.retry_after > self.cfg.retry_after_max_s:
                    got.detail = f"Retry-After {got.retry_after:.0f}s exceeds retry_after_max_s"
                    return got
                wait = got.retry_after
            else:
                wait = min(self.cfg.backoff_max_s, self.cfg.backoff_s * 2**attempt * self._rng.uniform(0.5, 1.5))
            await self.gate.defer(keys, wait)  # the whole host waits, not just this URL
            self.ledger.counters[f"{self.stage}/retries"] += 1
        raise AssertionError("unreachable")

    async def _get_once(self, url: str, kind: Kind, sink: Sink) -> Fetched | Failed:
        cfg = self.cfg
        cap = cfg.robots_max_bytes if kind == "robots" else cfg.max_bytes
        request = self.client.build_request("GET", url, headers={"Accept": ACCEPT[kind], "Accept-Encoding": "identity"})
        response = await self.client.send(request, stream=True)
        try:
            headers = {k.lower(): v for k, v in response.headers.items()}
            ctype = headers.get("content-type", "").split(";")[0].strip().lower()
            status = response.status_code
            if 200 <= status < 300:
                if kind == "page" and ctype not in cfg.html_types:
                    return Failed(url, "not_html", ctype or "no content-type")
                if kind == "image" and (ctype.startswith("text/") or ctype in cfg.html_types):
                    return Failed(url, "not_an_image", ctype)
            length = headers.get("content-length", "")
            if length.isdigit() and int(length) > cap:
                return Failed(url, "too_large", f"content-length {length} > {cap}")
            chunks, size = [], 0
            async for chunk in response.aiter_raw():
                size += len(chunk)
                if size > cap:
                    return Failed(url, "too_large", f"body over {cap} bytes")
                chunks.append(chunk)
            raw = b"".join(chunks)
            stream = response.extensions.get("network_stream")
            addr = stream.get_extra_info("server_addr") if stream is not None else None
        finally:
            await response.aclose()
        date = _now_iso()
        body = decode_body(raw, headers.get("content-encoding", ""), cap)
        ex = Exchange(
            url,
            "GET",
            request.url.raw_path.decode("ascii"),
            [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw],
            status,
            response.reason_phrase,
            response.http_version or "HTTP/1.1",
            [(k.decode("latin-1"), v.decode("latin-1")) for k, v in response.headers.raw],
            raw,
            date,
            addr[0] if addr else None,
        )
        if sink is not None:
            sink.append(ex)
        elif self.warc is not None:
            ex.archive(self.warc)
        if isinstance(body, str):
            return Failed(url, body, headers.get("content-encoding", ""))
        return Fetched(url, url, status, headers, body, date, ex)
