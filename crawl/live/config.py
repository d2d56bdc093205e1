"""`CrawlConfig`: every knob of the live crawler and the image fetcher, with safe defaults."""

from __future__ import annotations

import ipaddress

from pydantic import Field, field_validator

from corpus.config import Section


class CrawlConfig(Section):
    user_agent: str = Field(
        "interloom-crawler/0.1 (+https://github.com/interloom/interloom)",
        description="sent with every request and matched against robots.txt groups",
    )
    connect_timeout_s: float = Field(5.0, gt=0)
    read_timeout_s: float = Field(10.0, gt=0, description="longest silence while waiting for bytes")
    total_timeout_s: float = Field(30.0, gt=0, description="longest time for one attempt, headers to last byte")
    retries: int = Field(2, ge=0, description="extra attempts on timeouts, connection errors, 429 and 5xx")
    backoff_s: float = Field(0.5, ge=0, description="retry k waits backoff_s * 2**k, times a jitter in [0.5, 1.5)")
    backoff_max_s: float = Field(30.0, ge=0)
    retry_after_max_s: float = Field(120.0, ge=0, description="a longer Retry-After gives the URL up")
    min_delay_s: float = Field(
        1.0,
        ge=0,
        description="minimum gap per host between the end of one request "
        "and the start of the next (robots Crawl-delay may raise it)",
    )
    max_crawl_delay_s: float = Field(
        60.0,
        ge=0,
        description="a robots.txt Crawl-delay up to this is honoured; a "
        "longer one skips the host (reason crawl_delay_too_long)",
    )
    per_host_concurrency: int = Field(1, ge=1, description="requests in flight per host name and per server address")
    hosts_in_flight: int = Field(64, ge=1, description="hosts crawled concurrently by one actor")
    max_bytes: int = Field(10_000_000, ge=1, description="response bodies larger than this are aborted")
    robots_max_bytes: int = Field(500_000, ge=1)
    max_redirects: int = Field(5, ge=0)
    allow_private: list[str] = Field(
        default_factory=list, description="CIDRs exempt from the private/loopback refusal, e.g. 127.0.0.1/32"
    )
    html_types: list[str] = Field(default_factory=lambda: ["text/html", "application/xhtml+xml"])
    follow_links: bool = Field(False, description="follow <a href> links within the seed's host")
    max_depth: int = Field(1, ge=0, description="link depth from the seed when follow_links is on")
    max_pages_per_host: int = Field(10_000, ge=1)
    fetch_images: bool = Field(
        False,
        description="also fetch each page's <img> URLs into the same WARC, so a build from the WARCs needs no network",
    )
    actors: int = Field(2, ge=1, description="crawler (and image fetcher) actors")
    actor_num_cpus: float = Field(0.25, ge=0, description="Ray CPUs reserved per actor (they mostly wait on I/O)")
    warc_max_bytes: int = Field(100_000_000, ge=1, description="rotate a WARC file once it reaches this size")
    warc_gzip_level: int = Field(
        6,
        ge=1,
        le=9,
        description="gzip level of WARC records (warcio's default is 9); responses in a compressed format "
        "(JPEG, PNG, ...) are stored gzip members (crawl.live.warc_writer.stored_as_is)",
    )
    warc_prefix: str = Field("crawl", pattern=r"^[A-Za-z0-9_.-]+$")

    @field_validator("allow_private")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        for cidr in v:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"allow_private: {cidr!r} is not a CIDR (e.g. 127.0.0.1/32)") from None
        return v
