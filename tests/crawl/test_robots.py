"""robots.txt semantics (RFC 9309): the RFC's own examples, wildcards and the longest-match rule, group
selection by product token, Crawl-delay values (fractions kept; inf, nan, negative and junk ignored and
counted); and, against a loopback server, a Crawl-delay beyond `max_crawl_delay_s` skips the host at once
instead of stalling the fetcher."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # webserver.py (importlib mode)

import asyncio
import time

import pytest
from webserver import Route, Site, TestServer

from corpus.stats import Ledger
from crawl.live.config import CrawlConfig
from crawl.live.fetcher import Fetched, Fetcher
from crawl.live.politeness import HostGate
from crawl.live.robots import delay_value, parse_robots

UA = CrawlConfig().user_agent  # "interloom-crawler/0.1 (+https://...)"

# RFC 9309, section 5.1 ("Simple Example")
RFC_SIMPLE = """\
User-Agent: *
Disallow: *.gif$
Disallow: /example/
Allow: /publications/

User-Agent: foobot
Disallow:/
Allow:/example/page.html
Allow:/example/allowed.gif

User-Agent: barbot
User-Agent: bazbot
Disallow: /example/page.html

User-Agent: quxbot

EOF
"""


def allowed(text: str, path: str, agent: str = UA) -> bool:
    return parse_robots(text, agent).allowed("http://example.com" + path, agent)


@pytest.mark.parametrize(
    ("agent", "path", "expect"),
    [
        # foobot: only the two allowed paths (longest match beats "Disallow:/")
        ("foobot", "/example/page.html", True),
        ("foobot", "/example/allowed.gif", True),
        ("foobot", "/", False),
        ("foobot", "/publications/", False),
        ("FooBot/2.1 (+https://foo.example)", "/example/page.html", True),  # product token, any case
        # barbot and bazbot share one group
        ("barbot", "/example/page.html", False),
        ("bazbot", "/example/page.html", False),
        ("bazbot", "/example/other.gif", True),
        # quxbot: an empty group allows everything (the * group does not apply)
        ("quxbot", "/example/page.html", True),
        ("quxbot", "/x.gif", True),
        # everybody else: the * group
        ("otherbot", "/example/page.html", False),
        ("otherbot", "/pic.gif", False),
        ("otherbot", "/publications/a.gif", True),  # "/publications/" is the longer match
        ("otherbot", "/pic.gif?size=2", True),  # "$" anchors the end: this does not end in .gif
        ("otherbot", "/", True),
    ],
)
def test_rfc9309_simple_example(agent, path, expect):
    assert allowed(RFC_SIMPLE, path, agent) is expect


def test_rfc9309_longest_match_and_allow_wins_a_tie():
    # RFC 9309, section 5.2 ("Longest Match")
    text = "User-Agent: foobot\nAllow: /example/page/\nDisallow: /example/page/disallowed.gif\n"
    assert allowed(text, "/example/page/", "foobot")
    assert not allowed(text, "/example/page/disallowed.gif", "foobot")
    # section 2.2.2: equivalent allow and disallow rules -> allow
    assert allowed("User-agent: *\nDisallow: /same\nAllow: /same\n", "/same")
    # /robots.txt itself is always allowed
    assert allowed("User-agent: *\nDisallow: /\n", "/robots.txt")
    assert not allowed("User-agent: *\nDisallow: /\n", "/index.html")


def test_rfc9309_percent_encoding():
    # section 2.2.2: octets in rules and in URIs compare percent-encoded
    text = "User-agent: *\nDisallow: /foo/bar/%E3%83%84\nDisallow: /foo/bar/%62%61%7A\n"
    assert not allowed(text, "/foo/bar/%E3%83%84")
    assert not allowed(text, "/foo/bar/\u30c4")
    assert not allowed(text, "/foo/bar/baz")
    assert allowed(text, "/foo/bar/qux")


def test_wildcards_and_overlapping_rules_of_the_issue():
    text = "User-agent: *\nDisallow: /private/\nAllow: /private/public/\nDisallow: /*?sessionid=\nDisallow: /*.pdf$\n"
    expect = {
        "/private/public/a.html": True,
        "/private/a.html": False,
        "/page?sessionid=1": False,
        "/a/b?x=1&y=2?sessionid=3": False,
        "/page?x=1": True,
        "/files/doc.pdf": False,
        "/files/doc.pdf?download=1": True,
        "/files/doc.pdf.html": True,
        "/": True,
    }
    assert {p: allowed(text, p) for p in expect} == expect


def test_our_group_is_chosen_by_product_token():
    text = (
        "User-agent: *\nDisallow: /\n\nUser-agent: interloom-crawler\nDisallow: /secret/\n\n"
        "User-agent: interloom\nDisallow: /other/\n"
    )
    assert allowed(text, "/page.html") and not allowed(text, "/secret/x")
    assert allowed(text, "/other/x")  # "interloom" is not our product token, nor a prefix match of it
    assert not allowed(text, "/page.html", "somebot/1.0")


@pytest.mark.parametrize(
    ("value", "delay", "bad"),
    [
        ("2", 2.0, 0),
        ("0.25", 0.25, 0),
        (".5", 0.5, 0),
        ("0", 0.0, 0),
        ("1e308", 1e308, 0),
        ("99999", 99999.0, 0),
        ("inf", None, 1),
        ("-inf", None, 1),
        ("nan", None, 1),
        ("-1", None, 1),
        ("soon", None, 1),
        ("", None, 1),
        ("2 # seconds", 2.0, 0),
    ],
)
def test_crawl_delay_values(value, delay, bad):
    rules = parse_robots(f"User-agent: *\nDisallow: /x\nCrawl-delay: {value}\n", UA)
    assert rules.crawl_delay == delay and rules.bad_crawl_delay == bad
    assert delay_value(value.split("#")[0]) == delay


def test_crawl_delay_of_our_group_wins():
    text = "User-agent: *\nCrawl-delay: 9\n\nUser-agent: interloom-crawler\nCrawl-delay: 0.5\n"
    assert parse_robots(text, UA).crawl_delay == 0.5
    assert parse_robots(text, "otherbot").crawl_delay == 9.0


@pytest.mark.parametrize("value", ["inf", "1e308", "99999", "61"])
def test_crawl_delay_beyond_the_cap_skips_the_host_at_once(tmp_path, value):
    """A host whose Crawl-delay is beyond `max_crawl_delay_s` (default 60) is skipped: each URL a counted
    `crawl_delay_too_long` (infinite: an ignored value, counted, so the URLs are fetched), none waited for."""
    srv = TestServer(Site(), crawl_delay=value, routes={"/a.html": Route(), "/b.html": Route()})
    cfg = CrawlConfig(allow_private=["127.0.0.1/32"], min_delay_s=0.05, read_timeout_s=1, retries=0)

    async def go():
        fetcher = Fetcher(cfg, None, Ledger(), "crawl", HostGate(cfg.min_delay_s))
        try:
            return [await fetcher.fetch(srv.url(p), "page") for p in ("/a.html", "/b.html")], fetcher.ledger
        finally:
            await fetcher.aclose()

    try:
        t0 = time.monotonic()
        got, ledger = asyncio.run(go())
        elapsed = time.monotonic() - t0
    finally:
        srv.close()
    if value == "inf":  # not a finite number: ignored (counted), min_delay_s applies
        assert all(isinstance(g, Fetched) for g in got)
        assert ledger.counters["crawl/robots_bad_crawl_delay"] == 1
    else:
        assert [g.reason for g in got] == ["crawl_delay_too_long"] * 2
        assert [h.path for h in srv.hits()] == ["/robots.txt"]  # nothing else asked of that host
    assert elapsed < 5
