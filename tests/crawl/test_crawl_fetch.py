"""The fetch core against a real loopback server: every fault ends as its counted drop or a success,
robots.txt is obeyed, private addresses and bad schemes are refused before any connection, no cookies
travel, and every response read is archived in a valid WARC."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # webserver.py, crawl_fixtures.py (importlib mode)

import asyncio
import base64
import hashlib

import pytest
from crawl_fixtures import server, site  # noqa: E402,F401 - fixtures
from fastwarc.warc import ArchiveIterator, WarcRecordType

from corpus.stats import Ledger
from crawl.live.config import CrawlConfig
from crawl.live.fetcher import Fetched, Fetcher, parse_retry_after
from crawl.live.safety import AddressPolicy, UnsafeAddress, make_client
from crawl.live.warc_writer import RotatingWarcWriter, closed_segments, stored_as_is

ALLOW = ["127.0.0.1/32"]


def cfg(**kw) -> CrawlConfig:
    base = dict(
        allow_private=ALLOW,
        min_delay_s=0.05,
        connect_timeout_s=1.0,
        read_timeout_s=0.5,
        total_timeout_s=2.0,
        retries=2,
        backoff_s=0.05,
        max_bytes=1_000_000,
        retry_after_max_s=5,
    )
    base.update(kw)
    return CrawlConfig(**base)


def run_fetches(c: CrawlConfig, urls: list[str], tmp_path, kind="page"):
    async def go():
        warc = RotatingWarcWriter(tmp_path, "t", 10**9)
        f = Fetcher(c, warc, Ledger(), "crawl")
        out = {}
        for u in urls:
            out[u] = await f.fetch(u, kind)
        await f.aclose()
        warc.close()
        return out, f

    return asyncio.run(go())


def test_faults_end_as_counted_reasons(server, tmp_path):
    expect = {
        "/fault/slow": "timeout",
        "/fault/loop-a": "redirect_loop",
        "/fault/hop/0": "too_many_redirects",
        "/fault/big": "too_large",
        "/fault/bigstream": "too_large",
        "/fault/text.txt": "not_html",
        "/fault/notfound": "http_404",
        "/private/secret.html": "robots",
        "/fault/to-private": "unsafe_address",
        "/fault/to-ftp": "bad_scheme",
    }
    ok = ["/index.html", "/fault/flaky", "/fault/ratelimit", "/fault/cookie.html", "/index.html?again"]
    urls = [server.url(p) for p in [*expect, *ok]]
    got, fetcher = run_fetches(cfg(), urls, tmp_path)
    for path, reason in expect.items():
        r = got[server.url(path)]
        assert not isinstance(r, Fetched) and r.reason == reason, (path, r)
    for path in ok:
        r = got[server.url(path)]
        assert isinstance(r, Fetched) and r.status == 200 and b"<html" in r.body.lower(), (path, r)
    # retries really happened: slow 3 attempts, flaky 500 then 200, 429 then 200
    assert len(server.hits("/fault/slow")) == 3
    assert len(server.hits("/fault/flaky")) == 2
    rl = server.hits("/fault/ratelimit")
    assert len(rl) == 2 and rl[1].t - rl[0].t >= 1.0  # Retry-After: 1 honoured
    # robots: fetched once, the disallowed path never requested
    assert len(server.hits("/robots.txt")) == 1
    assert server.hits("/private/secret.html") == []
    # the redirect loop stopped at the loop, hop chain at max_redirects + 1 requests
    assert len(server.hits("/fault/loop-a")) == 1 and len(server.hits("/fault/loop-b")) == 1
    assert len([h for h in server.hits() if h.path.startswith("/fault/hop/")]) == 6
    # no cookie ever sent back, no credentials, our user agent on every request
    assert all("cookie" not in h.headers and "authorization" not in h.headers for h in server.hits())
    assert {h.headers["user-agent"] for h in server.hits()} == {cfg().user_agent}
    assert fetcher.ledger.counters["crawl/retries"] == 2 + 1 + 1


def test_per_host_spacing_from_server_log(server, tmp_path):
    c = cfg(min_delay_s=0.3)
    urls = [server.url(p) for p in list(server.site.pages)[:5]]
    run_fetches(c, urls, tmp_path)
    times = [h.t for h in server.hits()]
    assert len(times) == 6  # robots.txt + 5 pages
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert min(gaps) >= 0.3, gaps


def test_crawl_delay_from_robots_raises_spacing(site, tmp_path):
    from webserver import TestServer

    srv = TestServer(site, crawl_delay=0.5)
    try:
        run_fetches(cfg(min_delay_s=0.0), [srv.url(p) for p in list(site.pages)[:3]], tmp_path)
        times = [h.t for h in srv.hits()]
        assert len(times) == 4
        assert min(b - a for a, b in zip(times[1:], times[2:])) >= 0.5
    finally:
        srv.close()


def test_private_addresses_and_bad_schemes_refused_before_connecting(server, tmp_path):
    urls = [
        "http://10.0.0.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/",
        "http://0.0.0.0/",
        "http://224.0.0.1/",
        "file:///etc/passwd",
        "ftp://127.0.0.1/x",
        "http://user:pw@127.0.0.1/",
        server.url("/index.html"),
    ]
    got, _ = run_fetches(cfg(allow_private=[]), urls, tmp_path)  # 127.0.0.1 NOT allow-listed here
    reasons = {u: r.reason for u, r in got.items()}
    assert reasons == {
        "http://10.0.0.1/": "unsafe_address",
        "http://169.254.169.254/latest/meta-data/": "unsafe_address",
        "http://[::1]/": "unsafe_address",
        "http://0.0.0.0/": "unsafe_address",
        "http://224.0.0.1/": "unsafe_address",
        "file:///etc/passwd": "bad_scheme",
        "ftp://127.0.0.1/x": "bad_scheme",
        "http://user:pw@127.0.0.1/": "credentials_in_url",
        server.url("/index.html"): "unsafe_address",
    }
    assert server.hits() == []  # nothing reached the server


def test_transport_checks_the_address_it_connects_to(server):
    """Even a request that skips the up-front check is refused by the client's network backend."""

    async def go(allow):
        async with make_client(cfg(allow_private=allow)) as client:
            return await client.get(server.url("/index.html"))

    with pytest.raises(UnsafeAddress):
        asyncio.run(go([]))
    assert server.hits() == []
    assert asyncio.run(go(ALLOW)).status_code == 200
    assert not AddressPolicy([]).allowed(__import__("ipaddress").ip_address("::ffff:10.0.0.1"))
    assert AddressPolicy([]).allowed(__import__("ipaddress").ip_address("8.8.8.8"))


def test_warc_holds_every_response_as_received(server, tmp_path):
    pages = list(server.site.pages)[:3]
    urls = [server.url(p) for p in pages] + [server.url("/fault/notfound"), server.url("/fault/flaky")]
    got, _ = run_fetches(cfg(), urls, tmp_path)
    [(warc, state)] = list(closed_segments(tmp_path, "t"))
    with open(warc, "rb") as fh:
        assert all(rec.verify_block_digest() for rec in ArchiveIterator(fh, parse_http=False))
    responses, requests = {}, 0
    with open(warc, "rb") as fh:
        for rec in ArchiveIterator(fh, parse_http=True):
            if rec.record_type != WarcRecordType.warcinfo:
                assert rec.verify_payload_digest()
            if rec.record_type == WarcRecordType.response:
                uri = rec.headers["WARC-Target-URI"]
                responses.setdefault(uri, []).append((rec.http_headers.status_code, rec.reader.read()))
                assert rec.headers["WARC-Date"] and rec.headers["WARC-IP-Address"] == "127.0.0.1"
            elif rec.record_type == WarcRecordType.request:
                requests += 1
    for p in pages:
        [(status, body)] = responses[server.url(p)]
        assert status == 200 and body == server.site.pages[p]
        assert got[server.url(p)].record_id
    assert [s for s, _ in responses[server.url("/fault/flaky")]] == [500, 200]
    assert [s for s, _ in responses[server.url("/fault/notfound")]] == [404]
    assert server.url("/robots.txt") in responses
    assert requests == sum(len(v) for v in responses.values())
    # warcio reads it too
    from warcio.archiveiterator import ArchiveIterator as WarcioIterator

    with open(warc, "rb") as fh:
        assert sum(1 for r in WarcioIterator(fh) if r.rec_type == "response") == sum(len(v) for v in responses.values())


def test_compressed_payloads_are_stored_as_is_and_read_back(server, tmp_path):
    """Image responses (JPEG, PNG, ...: compressed already) go into the WARC as stored gzip members (no deflate:
    it would cost most of an image fetch's CPU for a few percent); pages are deflated as before. Both read
    back byte for byte with valid digests."""
    assert stored_as_is([("Content-Type", "image/jpeg")]) and stored_as_is([("content-type", "IMAGE/PNG; x=1")])
    assert not stored_as_is([("Content-Type", "text/html; charset=utf-8")])
    assert not stored_as_is([("Content-Type", "image/svg+xml")]) and not stored_as_is([])
    assert not stored_as_is([("Content-Type", "image/jpeg"), ("Content-Encoding", "gzip")])
    photos = [p for p in server.site.photos if p.endswith((".jpg", ".png"))][:3]
    page = next(iter(server.site.pages))
    run_fetches(cfg(max_bytes=20_000_000), [server.url(p) for p in photos], tmp_path / "images", kind="image")
    run_fetches(cfg(), [server.url(page)], tmp_path / "pages")
    members = {**_members(tmp_path / "images"), **_members(tmp_path / "pages")}
    for p in photos:
        size, body = members[server.url(p)]
        assert body == server.site.photos[p] and size > len(body)  # stored: never smaller than the payload
    size, body = members[server.url(page)]
    assert body == server.site.pages[page] and size < len(body) / 2  # an HTML page: deflated


def _members(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Response URL -> (bytes of its gzip member, payload) of the one WARC in `folder`; digests checked."""
    [(warc, _)] = list(closed_segments(folder, "t"))
    starts, responses = [], {}  # member offsets; response URL -> (its offset, payload)
    with open(warc, "rb") as fh:
        for rec in ArchiveIterator(fh, parse_http=True):
            starts.append(rec.stream_pos)
            if rec.record_type == WarcRecordType.response:
                responses[rec.headers["WARC-Target-URI"]] = (rec.stream_pos, rec.reader.read())
    with open(warc, "rb") as fh:
        assert all(rec.verify_block_digest() for rec in ArchiveIterator(fh, parse_http=False))
    ends = dict(zip(starts, [*starts[1:], warc.stat().st_size]))
    return {url: (ends[pos] - pos, body) for url, (pos, body) in responses.items()}


def test_retry_after_parsing():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: no wait


def test_config_rejects_bad_cidr():
    with pytest.raises(ValueError, match="not a CIDR"):
        CrawlConfig(allow_private=["localhost"])
    with pytest.raises(ValueError):
        CrawlConfig(bogus=1)


def test_ipv6_forms_of_private_ipv4_and_dns_spellings_of_loopback_are_refused(server, tmp_path):
    """An IPv6 address is judged by the IPv4 address it carries (NAT64 and 6to4 route to it); IPv6 reserved
    and site-local space is refused; hostnames that resolve to 127.0.0.1 (decimal, octal, short forms,
    localhost) are refused at resolution time, so nothing reaches the loopback server."""
    import ipaddress

    policy = AddressPolicy([])
    refused = [
        "64:ff9b::a00:1",
        "64:ff9b::7f00:1",
        "64:ff9b::a9fe:a9fe",
        "2002:a00:1::",
        "2002:7f00:1::1",
        "::7f00:1",
        "::a00:1",
        "fec0::1",
        "::ffff:169.254.169.254",
    ]
    for a in refused:
        assert not policy.allowed(ipaddress.ip_address(a)), a
    for a in ["64:ff9b::808:808", "2002:808:808::1", "2606:4700:4700::1111", "8.8.8.8"]:
        assert policy.allowed(ipaddress.ip_address(a)), a
    assert AddressPolicy(["10.0.0.0/8"]).allowed(ipaddress.ip_address("64:ff9b::a00:1"))  # allow-list applies
    port = server.port
    urls = [
        f"http://[64:ff9b::7f00:1]:{port}/",
        f"http://[::127.0.0.1]:{port}/",
        f"http://2130706433:{port}/",
        f"http://0177.0.0.1:{port}/",
        f"http://0x7f.1:{port}/",
        f"http://127.1:{port}/",
        f"http://localhost:{port}/index.html",
    ]
    got, _ = run_fetches(cfg(allow_private=[]), urls, tmp_path)
    expect = {u: "unsafe_address" for u in urls}
    expect[f"http://0177.0.0.1:{port}/"] = "bad_url"  # the HTTP client refuses to parse this form at all
    assert {u: r.reason for u, r in got.items()} == expect
    assert server.hits() == []


def test_urls_the_client_cannot_send_are_counted_drops_not_a_lost_batch(server, tmp_path):
    """Image URLs with control characters or lone surrogates (as they come out of real <img src>) are a
    counted `bad_url` before any request; the other URLs of the same batch still come back."""
    from corpus.stats import check_funnel
    from crawl.live.image_fetcher import ImageFetcher
    from crawl.live.safety import url_problem

    photo = next(iter(server.site.photos))
    bad = [
        server.url("/photos/a\x01b.jpg"),
        server.url("/photos/\x7f.jpg"),
        server.url("/photos/a\tb.jpg"),
        server.url("/photos/x.jpg?q=\udcff"),
    ]
    assert [url_problem(u) for u in bad] == ["bad_url"] * len(bad)
    assert url_problem(server.url("/photos/a b.jpg")) is None  # a space is quoted by the client, still fine

    async def go():
        fetcher = ImageFetcher(cfg(), tmp_path)
        got = await fetcher.fetch_many([*bad, server.url(photo)])
        await fetcher.aclose()
        return got, fetcher.ledger

    got, ledger = asyncio.run(go())
    assert got == {**{u: "bad_url" for u in bad}, server.url(photo): server.site.photos[photo]}
    d = ledger.to_dict()
    assert check_funnel(d) == [] and d["items"]["fetch_images/image"] == {
        "in": len(bad) + 1,
        "out": 1,
        "drops": {"bad_url": len(bad)},
    }


@pytest.mark.parametrize(
    "state,shown",
    [
        (b'{"url": "http://example.com/", "status": 200}\n{"url": \n', "line 2: damaged crawl state, not JSON"),
        (b'{"status": 200}\n', "line 1: damaged crawl state, not an object with a 'url'"),
        (b'{"url": "http://example.com/\xff"}\n', "line 1: damaged crawl state, not JSON"),
    ],
)
def test_resuming_over_a_damaged_crawl_state_names_file_and_line(tmp_path, state, shown):
    """A closed WARC's state sidecar that is damaged: the resume is refused before any actor starts (its
    JSONDecodeError / KeyError used to end the crawl actors)."""
    from crawl.live.crawler import Crawler

    (tmp_path / "crawl-a00-00000.warc.gz").write_bytes(b"")
    (tmp_path / "crawl-a00-00000.state.jsonl").write_bytes(state)
    with pytest.raises(ValueError, match=f"crawl-a00-00000.state.jsonl {shown}"):
        next(Crawler(CrawlConfig(), tmp_path, progress=False).iter_pages(["http://example.com/"]))


def test_exchange_records_keep_their_layout_and_digests(tmp_path):
    """A response record's WARC headers come in one fixed order (the bytes of an archive do not change with how
    the writer digests), its payload digest is the SHA-1 of the payload and its block digest verifies;
    the request record (no body) has the payload digest of no bytes."""
    payload = bytes(range(256)) * 2400  # 614,400 bytes: over 512 KiB, where warcio spills a buffer to disk
    w = RotatingWarcWriter(tmp_path, "t", 1 << 30)
    w.write_exchange(
        "http://h.test/a.png",
        method="GET",
        target="/a.png",
        request_headers=[("Host", "h.test")],
        status=200,
        reason="OK",
        http_version="HTTP/1.1",
        response_headers=[("Content-Type", "image/png")],
        payload=payload,
        date="2026-01-01T00:00:00Z",
        ip="127.0.0.2",
    )
    w.close()
    [(warc, _)] = list(closed_segments(tmp_path, "t"))
    with open(warc, "rb") as fh:  # (type, WARC headers in order, block digest verified) per record
        records = [
            (r.record_type, list(r.headers), r.verify_block_digest()) for r in ArchiveIterator(fh, parse_http=False)
        ]
    assert [(t, ok) for t, _, ok in records] == [
        (WarcRecordType.warcinfo, True),
        (WarcRecordType.response, True),
        (WarcRecordType.request, True),
    ]
    response, request = dict(records[1][1]), dict(records[2][1])
    assert [k for k, _ in records[1][1]] == [
        "WARC-Date",
        "WARC-IP-Address",
        "WARC-Type",
        "WARC-Record-ID",
        "WARC-Target-URI",
        "WARC-Payload-Digest",
        "WARC-Block-Digest",
        "Content-Type",
        "Content-Length",
    ]
    sha1 = base64.b32encode(hashlib.sha1(payload).digest()).decode()
    assert response["WARC-Payload-Digest"] == f"sha1:{sha1}"
    assert request["WARC-Payload-Digest"] == "sha1:3I42H3S6NNFQ2MSVX7XZKYAYSCX5QBYJ"  # SHA-1 of no bytes


def test_fetched_images_are_checked_in_the_web_formats_only():
    """The fetcher's image check decodes the web's formats (corpus.imagefile.WEB_FORMATS) only: an intact
    PPM or EPS answer is the drop unsupported_image_format (before, a PPM was decoded and passed on, an EPS
    started Ghostscript where installed), bytes that are no image stay not_an_image."""
    import io

    from PIL import Image as PILImage

    from crawl.live.image_fetcher import check_image

    def answer(fmt: str | None, body: bytes = b"") -> Fetched:
        if fmt:
            buf = io.BytesIO()
            PILImage.new("RGB", (64, 48), (1, 2, 3)).save(buf, format=fmt)
            body = buf.getvalue()
        url = "http://example.org/x"
        return Fetched(url, url, 200, {"content-type": "image/whatever"}, body, "2026-01-01T00:00:00Z")

    assert check_image(answer("PNG")) is None
    assert check_image(answer("WEBP")) is None
    assert check_image(answer("PPM")) == "unsupported_image_format"
    assert check_image(answer("EPS")) == "unsupported_image_format"
    assert check_image(answer(None, b"\x00\x01garbage")) == "not_an_image"
