"""Image fetching for documents whose images are not in their source (img2dataset style).

`ImageFetcher` (async, one event loop): fetches many URLs concurrently across hosts, one at a time per host
with the crawler's politeness, robots.txt, safety checks, retries and byte cap; then checks the answer is an
image (HTML or text -> `not_an_image`; Pillow cannot identify it -> `not_an_image`; a format outside the
web's (`corpus.imagefile.WEB_FORMATS`: EPS, PSD, ...) -> `unsupported_image_format`; fails to decode ->
`truncated_image` / `corrupt_image`) and honours `X-Robots-Tag: noai` / `noimageai` (`optout_noai`).
Every response is archived to WARC. Outcomes are counted as items of stage `fetch_images`.

`ImageFetchActor` runs an `ImageFetcher` on Ray; `FetchResolver` is the handle the build's image stage uses:
hosts are hash-partitioned over the actors as in the crawler, so per-host politeness holds cluster-wide, and
a `FetchResolver` can be shipped to Ray tasks (it holds actor handles only). Each request takes its slot from
one `HostGateActor` shared by the actors (keyed by host name and resolved address, redirect hops included),
so per-host politeness holds cluster-wide.

    resolver = FetchResolver(CrawlConfig(...), warc_dir="out/image-warcs")
    got = resolver.fetch_many(urls)   # {url: bytes | reason}; also resolver(urls)
    ledger = resolver.close()         # closes the WARCs, stops the actors, returns the counts
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
from PIL import Image as PILImage
from PIL import UnidentifiedImageError

from corpus.imagefile import open_image, unidentified_reason
from corpus.stats import Ledger
from crawl.live.config import CrawlConfig
from crawl.live.fetcher import Fetched, Fetcher
from crawl.live.politeness import partition, start_gate
from crawl.live.safety import host_key, url_problem
from crawl.live.warc_writer import RotatingWarcWriter

STAGE = "fetch_images"
_HTML_SNIFF = (b"<!doctype html", b"<html", b"<head", b"<body", b"<?xml", b"<!--")


def robots_tag_optout(value: str) -> bool:
    """True when an X-Robots-Tag value opts out of AI use (`noai`, `noimageai`, optionally `agent: noai`)."""
    for directive in value.lower().replace(";", ",").split(","):
        token = directive.strip().rsplit(":", 1)[-1].strip()
        if token in ("noai", "noimageai"):
            return True
    return False


def check_image(got: Fetched, max_pixels: int = 178_956_970) -> str | None:
    """Drop reason for a fetched image response, or None when it is a decodable image we may use."""
    if robots_tag_optout(got.headers.get("x-robots-tag", "")):
        return "optout_noai"
    head = got.body[:64].lstrip().lower()
    if got.content_type.startswith("text/") or head.startswith(_HTML_SNIFF):
        return "not_an_image"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PILImage.DecompressionBombWarning)
            with open_image(got.body) as im:
                if im.size[0] * im.size[1] > max_pixels:
                    return "too_large"
                im.verify()
            with open_image(got.body) as im:
                im.load()  # verify() does not decode pixels; truncation shows here
    except (PILImage.DecompressionBombError, PILImage.DecompressionBombWarning):
        return "too_large"
    except UnidentifiedImageError:
        return unidentified_reason(got.body)
    except (OSError, SyntaxError, ValueError) as e:
        return "truncated_image" if "truncated" in str(e).lower() else "corrupt_image"
    return None


class ImageFetcher:
    def __init__(self, cfg: CrawlConfig, warc_dir: str | Path | None, prefix: str = "images", gate: Any = None):
        self.cfg = cfg
        self.ledger = Ledger()
        self.warc = (
            RotatingWarcWriter(warc_dir, prefix, cfg.warc_max_bytes, gzip_level=cfg.warc_gzip_level)
            if warc_dir is not None
            else None
        )
        self.fetcher = Fetcher(cfg, self.warc, self.ledger, STAGE, gate)
        self._hosts = asyncio.Semaphore(cfg.hosts_in_flight)  # bounds this fetcher's calls parked in the gate

    async def fetch_one(self, url: str) -> bytes | str:
        count = self.ledger.item(STAGE, "image")
        count.n_in += 1
        try:
            got = await self.fetcher.fetch(url, "image")
            reason = got.reason if not isinstance(got, Fetched) else await asyncio.to_thread(check_image, got)
        except Exception as e:  # noqa: BLE001 - one failing URL is a counted drop, not the whole batch lost
            reason = f"error:{type(e).__name__}"
            self.ledger.drop(STAGE, reason, url=url, item="image", detail=str(e))
            return reason
        if self.warc is not None:
            self.warc.maybe_rotate()
        if reason is not None:
            self.ledger.drop(STAGE, reason, url=url, item="image", detail=getattr(got, "detail", ""))
            return reason
        count.n_out += 1
        assert isinstance(got, Fetched)
        return got.body

    async def fetch_many(self, urls: list[str]) -> dict[str, bytes | str]:
        """{url: bytes | reason} for the distinct URLs: up to `hosts_in_flight` hosts at once (over all
        concurrent calls), one URL at a time per host."""
        by_host: dict[str, list[str]] = {}
        for u in dict.fromkeys(urls):
            by_host.setdefault("" if url_problem(u) else host_key(u), []).append(u)  # bad URLs: counted drops
        out: dict[str, bytes | str] = {}

        async def host(host_urls: list[str]) -> None:
            async with self._hosts:
                for u in host_urls:
                    out[u] = await self.fetch_one(u)

        await asyncio.gather(*(host(g) for g in by_host.values()))
        return {u: out[u] for u in dict.fromkeys(urls)}

    async def aclose(self) -> dict[str, Any]:
        await self.fetcher.aclose()
        if self.warc is not None:
            self.warc.close()
        return {
            "ledger": self.ledger.to_dict(),
            "rejects": list(self.ledger.rejects),
            "warcs": list(self.warc.closed) if self.warc else [],
        }


class ImageFetchWorker:
    """Ray actor body (async actor): one `ImageFetcher` per actor, created in the actor's event loop."""

    def __init__(self, index: int, cfg: dict[str, Any], warc_dir: str | None, gate: Any = None):
        c = CrawlConfig(**cfg)
        self.fetcher = ImageFetcher(c, warc_dir, prefix=f"{c.warc_prefix}-images-a{index:02d}", gate=gate)

    async def fetch_many(self, urls: list[str]) -> dict[str, bytes | str]:
        return await self.fetcher.fetch_many(urls)

    async def close(self) -> dict[str, Any]:
        return await self.fetcher.aclose()


ImageFetchActor = ray.remote(ImageFetchWorker)


class FetchResolver:
    """`urls -> {url: bytes | drop reason}` served by `cfg.actors` image fetch actors (picklable)."""

    def __init__(self, cfg: CrawlConfig, warc_dir: str | Path | None = None):
        if not ray.is_initialized():
            raise ValueError("FetchResolver needs Ray: call ray.init() (or pipeline.build.init_ray) first")
        self.cfg = cfg
        # an actor fetches for at most hosts_in_flight hosts at once, one URL at a time per host
        self.gate = start_gate(cfg.min_delay_s, cfg.per_host_concurrency, fetches=cfg.actors * cfg.hosts_in_flight)
        self.actors = [
            ImageFetchActor.options(num_cpus=cfg.actor_num_cpus).remote(
                i, cfg.model_dump(), None if warc_dir is None else str(warc_dir), self.gate
            )
            for i in range(cfg.actors)
        ]

    def fetch_many(self, urls: list[str]) -> dict[str, bytes | str]:
        return self.submit(urls)()

    __call__ = fetch_many

    def submit(self, urls: list[str]) -> Callable[[], dict[str, bytes | str]]:
        """Send the requests of `fetch_many(urls)` to the actors now; the returned function waits for the
        answers and returns what `fetch_many` would (`crawl.images.Submit`: the image stage's look-ahead)."""
        out: dict[str, bytes | str] = {}
        groups: dict[int, list[str]] = {}
        for url in dict.fromkeys(urls):
            problem = url_problem(url)
            if problem:
                out[url] = problem  # never reaches an actor (counted by the caller's image stage)
            else:
                groups.setdefault(partition(host_key(url), len(self.actors)), []).append(url)
        refs = [self.actors[i].fetch_many.remote(g) for i, g in groups.items()]

        def result() -> dict[str, bytes | str]:
            for part in ray.get(refs):
                out.update(part)
            return {u: out[u] for u in dict.fromkeys(urls)}

        return result

    def close(self) -> Ledger:
        """Close the actors' WARC files, stop the actors, and return their merged counts."""
        ledger = Ledger()
        for res in ray.get([a.close.remote() for a in self.actors]):
            part = Ledger.from_dict(res["ledger"])
            part.rejects = res["rejects"]
            ledger.merge(part)
        for a in [*self.actors, self.gate]:
            ray.kill(a)
        self.actors = []
        return ledger
