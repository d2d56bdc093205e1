"""The live crawler: seed URLs -> Ray actors -> WARC files, a resumable crawl state, and `RawPage`s.

The frontier is hash-partitioned over `cfg.actors` `CrawlActor`s (`politeness.partition`, sha1 of the host
key): each seed and each followed link goes to the actor owning its host. Every request of every actor
(pages, redirect hops to any host, images, robots.txt) takes its slot from one `HostGateActor` of the run,
keyed by host name and resolved address, and robots.txt answers are shared through it, so per-host
politeness holds cluster-wide. Each actor crawls its hosts concurrently (one request at a time per host,
`min_delay_s` apart, robots.txt obeyed, a Crawl-delay over `max_crawl_delay_s` skips the host), optionally
follows links within the seed's host up to `max_depth`, optionally fetches each page's images into the same
WARC, and archives every response to its own rotating WARC files in the output folder.

Every URL taken from the frontier is counted in stage `crawl` of a `Ledger`: out (an HTML page) or a drop
with its reason. The outcome of each URL is written to the state sidecar of the WARC file holding its
records (`warc_writer`), so a crawl killed at any point and started again with the same output folder skips
every URL already archived, fetches the rest, and reports the same funnel as one uninterrupted run.

The actors are driven by the shared `corpus.runner.Runner` (stage `crawl`, one unit per actor share,
`actor_num_cpus` declared per actor) with its failure policy: an actor that dies (its process or node lost)
is replaced by a fresh one for the same share, which resumes like a restarted crawl (URLs in closed WARC
files are counted, not fetched; the dead actor's open WARC file is removed and its URLs fetched again) after
the gate took back the dead actor's slots; pages already yielded are not yielded twice. A share whose
actor dies more than `max_deaths` times, or an actor that cannot write (an `OSError`: disk full, permission),
stops the crawl with `UnitFailed` once the others' batches in flight are in; the same command resumes.

    crawler = Crawler(CrawlConfig(follow_links=True), "out/crawl")
    for page in crawler.iter_pages(read_seeds("seeds.txt")):   # RawPage, source "warc:<file>#<record-id>"
        ...
    crawler.result  # CrawlResult: warcs, ledger (also written to out/crawl/crawl_stats.json)
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

import lxml.html
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from corpus.record import make_doc_id
from corpus.runner import Runner, Stage
from corpus.stats import Ledger
from corpus.steps import Resources
from crawl.live.config import CrawlConfig
from crawl.live.fetcher import Exchange, Fetched, Fetcher
from crawl.live.image_fetcher import check_image
from crawl.live.politeness import partition, start_gate
from crawl.live.safety import host_key, url_problem
from crawl.live.warc_writer import WARC_SUFFIX, RotatingWarcWriter, clean_unfinished, closed_segments, read_state
from crawl.page import RawPage

STAGE = "crawl"


def canonical(url: str) -> str:
    """Frontier key: scheme and host lower-cased, default port and fragment removed, empty path -> '/'."""
    p = urlsplit(url.strip())
    host = (p.hostname or "").lower().rstrip(".")
    if ":" in host:
        host = f"[{host}]"
    try:
        port = p.port
    except ValueError:
        return url.strip()
    scheme = p.scheme.lower()
    netloc = host if port is None or (scheme, port) in (("http", 80), ("https", 443)) else f"{host}:{port}"
    return urlunsplit((scheme, netloc, p.path or "/", p.query, ""))


def read_seeds(path: str | Path, column: str = "url") -> list[str]:
    """Seed URLs from a text file (one per line, blank lines and # comments skipped) or a Parquet column."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(
            f"seed file {p} is a folder: give a text file (one URL per line) or a .parquet file"
            if p.is_dir()
            else f"seed file not found: {p}"
        )
    if p.suffix == ".parquet":
        try:
            schema = pq.read_schema(p)
        except pa.ArrowException as e:
            raise ValueError(f"seed file {p}: not a readable Parquet file ({e})") from None
        if column not in schema.names:
            raise ValueError(f"seed file {p}: no column {column!r} (columns: {', '.join(schema.names)})")
        seeds = [str(u) for u in pq.read_table(p, columns=[column]).column(column).to_pylist() if u]
    else:
        try:
            lines = p.read_text(encoding="utf-8-sig").splitlines()  # (a byte order mark is no part of a URL)
        except UnicodeDecodeError as e:
            raise ValueError(
                f"seed file {p}: not UTF-8 text ({e.reason} at byte {e.start}); give a text file "
                f"with one URL per line or a .parquet file"
            ) from None
        seeds = [s for s in (line.strip() for line in lines) if s and not s.startswith("#")]
    if not seeds:
        raise ValueError(f"seed file {p} holds no URL")
    return seeds


def page_links(body: bytes, base_url: str) -> tuple[list[str], list[str]]:
    """(<a href> links, <img src> URLs) of an HTML page, absolute, http(s) only, fragments removed, in order."""
    try:
        doc = lxml.html.document_fromstring(body)
    except (ValueError, lxml.etree.ParserError):
        return [], []
    base = base_url
    for href in doc.xpath("//base/@href")[:1]:
        base = urljoin(base_url, href.strip())

    def absolute(values: list[str]) -> list[str]:
        out = []
        for v in values:
            u = urljoin(base, v.strip()).split("#", 1)[0]
            if u.startswith(("http://", "https://")):
                out.append(canonical(u))
        return list(dict.fromkeys(out))

    return absolute(doc.xpath("//a/@href")), absolute(doc.xpath("//img/@src"))


class CrawlWorker:
    """The body of a `CrawlActor` (an async Ray actor): the frontier and fetches of its share of hosts."""

    def __init__(self, index: int, n_actors: int, cfg: dict[str, Any], output: str, gate: Any = None, holder: str = ""):
        self.cfg = CrawlConfig(**cfg)
        self.index, self.n_actors = index, n_actors
        self.output = Path(output)
        prefix = f"{self.cfg.warc_prefix}-a{index:02d}"
        self.removed = clean_unfinished(self.output, prefix)
        self.warc = RotatingWarcWriter(
            self.output, prefix, self.cfg.warc_max_bytes, gzip_level=self.cfg.warc_gzip_level
        )
        self.ledger = Ledger()
        self.ledger.stage(STAGE)
        self.fetcher = Fetcher(self.cfg, self.warc, self.ledger, STAGE, gate, holder)
        # resume: outcomes of every URL in a closed WARC file, whichever actor wrote it
        self.done: dict[str, dict[str, Any]] = {
            e["url"]: e for e in read_state(self.output, self.cfg.warc_prefix + "-a")
        }
        self.images_done: set[str] = {u for e in self.done.values() for u in e.get("images", {})}
        self.queues: dict[str, deque[tuple[str, int]]] = {}
        self.seen: set[str] = set()
        self.pages_per_host: dict[str, int] = {}
        self._out: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._error: BaseException | None = None
        self._finished = False

    # ---- frontier ------------------------------------------------------------------------------------
    def add(self, seeds: list[str]) -> int:
        for url in seeds:
            assert partition(host_key(url), self.n_actors) == self.index, f"{url} belongs to another actor"
            self._enqueue(url, 0)
        return sum(len(q) for q in self.queues.values())

    def _enqueue(self, url: str, depth: int) -> None:
        if url in self.seen:
            return
        self.seen.add(url)
        entry = self.done.get(url)
        if entry is None:
            self.queues.setdefault(host_key(url), deque()).append((url, depth))
            return
        # archived by an earlier run: count its outcome again, never fetch it again
        count = self.ledger.stage(STAGE)
        count.n_in += 1
        self.ledger.counters[f"{STAGE}/resumed"] += 1
        if entry["reason"]:
            self.ledger.drop(STAGE, entry["reason"], url=url, item="record", detail="(earlier run)")
        else:
            count.n_out += 1
            self.pages_per_host[host_key(url)] = self.pages_per_host.get(host_key(url), 0) + 1
            self._replay_images(entry)
            for link in entry.get("links", []):
                self._enqueue(link, entry["depth"] + 1)

    def _replay_images(self, entry: dict[str, Any]) -> None:
        count = self.ledger.item(STAGE, "image")
        for url, reason in entry.get("images", {}).items():
            count.n_in += 1
            if reason:
                self.ledger.drop(STAGE, reason, url=url, item="image", detail="(earlier run)")
            else:
                count.n_out += 1

    # ---- crawling ------------------------------------------------------------------------------------
    async def _crawl_one(self, url: str, depth: int, host: str) -> RawPage | None:
        count = self.ledger.stage(STAGE)
        count.n_in += 1
        sink: list[Exchange] = []
        entry: dict[str, Any] = {"url": url, "depth": depth}
        page = None
        if self.pages_per_host.get(host, 0) >= self.cfg.max_pages_per_host:
            got = None
            entry["reason"] = "host_page_limit"
        else:
            got = await self.fetcher.fetch(url, "page", sink)
            entry["reason"] = got.reason if not isinstance(got, Fetched) else ""
        links: list[str] = []
        if isinstance(got, Fetched):
            self.pages_per_host[host] = self.pages_per_host.get(host, 0) + 1
            hrefs, imgs = page_links(got.body, got.final_url)
            if self.cfg.follow_links and depth < self.cfg.max_depth:
                links = [u for u in hrefs if host_key(u) == host and not url_problem(u)]
            entry.update(final_url=got.final_url, links=links)
            if self.cfg.fetch_images:
                entry["images"] = await self._fetch_images(imgs, sink)
        # archive the URL's records and its done-mark together (no await in between: same WARC file)
        for ex in sink:
            ex.archive(self.warc)
        self.warc.add_state(entry)
        if isinstance(got, Fetched):
            count.n_out += 1
            assert got.exchange is not None and got.exchange.warc, "page response must be archived"
            source = f"warc:{got.exchange.warc}#{got.exchange.record_id}"
            page = RawPage(
                url=got.final_url,
                body=got.body,
                source=source,
                fetched_at=got.fetched_at,
                headers=dict(got.headers),
                id=make_doc_id(source),
            )
        else:
            detail = got.detail if got is not None else f"over {self.cfg.max_pages_per_host} pages"
            self.ledger.drop(STAGE, entry["reason"], url=url, item="record", detail=detail)
        self.warc.maybe_rotate()
        for link in links:
            self._enqueue(link, depth + 1)
        return page

    async def _fetch_images(self, urls: list[str], sink: list[Exchange]) -> dict[str, str]:
        """Fetch a page's images not fetched before; {url: "" | drop reason} (items of stage crawl)."""
        count = self.ledger.item(STAGE, "image")
        out: dict[str, str] = {}
        for url in urls:
            if url in self.images_done:
                continue
            self.images_done.add(url)
            count.n_in += 1
            got = await self.fetcher.fetch(url, "image", sink)
            reason = got.reason if not isinstance(got, Fetched) else await asyncio.to_thread(check_image, got)
            out[url] = reason or ""
            if reason:
                self.ledger.drop(STAGE, reason, url=url, item="image", detail=getattr(got, "detail", ""))
            else:
                count.n_out += 1
        return out

    async def _host_worker(self, host: str, sem: asyncio.Semaphore) -> None:
        assert self._out is not None
        async with sem:
            queue = self.queues[host]
            while queue:
                url, depth = queue.popleft()
                try:
                    page = await self._crawl_one(url, depth, host)
                except Exception as e:  # noqa: BLE001 - a failing URL is a counted drop, never a crash
                    self.ledger.drop(STAGE, f"error:{type(e).__name__}", url=url, item="record", detail=str(e))
                    page = None
                if page is not None:
                    await self._out.put((url, page))

    async def _run(self) -> None:
        assert self._out is not None
        try:
            sem = asyncio.Semaphore(self.cfg.hosts_in_flight)
            await asyncio.gather(*(self._host_worker(h, sem) for h in list(self.queues)))
        except BaseException as e:  # surfaced to the driver by next_batch
            self._error = e
        finally:
            await self._out.put(None)

    async def next_batch(self, max_pages: int) -> dict[str, Any]:
        """Up to `max_pages` pages fetched since the last call (waits for at least one, or the end), with
        the frontier URL each was fetched for."""
        if self._task is None:
            self._out = asyncio.Queue(maxsize=max(8, 4 * max_pages))
            self._task = asyncio.create_task(self._run())
        assert self._out is not None
        pages: list[tuple[str, RawPage]] = []
        item = await self._out.get()
        while True:
            if item is None:
                self._finished = True
                break
            pages.append(item)
            if len(pages) >= max_pages or self._out.empty():
                break
            item = self._out.get_nowait()
        if self._error is not None:
            raise self._error
        return {"pages": pages, "done": self._finished}

    async def finish(self) -> dict[str, Any]:
        """Close the open WARC (with its state) and report counts."""
        await self.fetcher.aclose()
        self.warc.close()
        return {
            "ledger": self.ledger.to_dict(),
            "rejects": list(self.ledger.rejects),
            "warcs": self.warc.closed,
            "removed": self.removed,
        }


CrawlActor = ray.remote(max_restarts=0, max_task_retries=0)(CrawlWorker)  # the runner's policy replaces it


@dataclass(frozen=True)
class Share:
    """One actor's part of the frontier: a runner unit, run by one actor at a time (a new one if it died)."""

    index: int
    seeds: tuple[str, ...]
    name: str


@dataclass
class CrawlResult:
    output: Path
    warcs: list[Path] = field(default_factory=list)  # every closed WARC file of the output folder
    ledger: Ledger = field(default_factory=Ledger)
    pages: int = 0  # pages yielded by this run


class Crawler:
    """Drives the actors; see the module docstring. A Ray instance must be running or startable."""

    def __init__(self, cfg: CrawlConfig, output: str | Path, progress: bool = True):
        self.cfg = cfg
        self.output = Path(output)
        self.progress = progress
        self.result = CrawlResult(self.output)
        self._actors: list[Any] = []  # the live actor of each share

    def _plan(self, seeds: Iterable[str], ledger: Ledger) -> list[list[str]]:
        groups: list[list[str]] = [[] for _ in range(self.cfg.actors)]
        seen: set[str] = set()
        count = ledger.stage(STAGE)
        for raw in seeds:
            problem = url_problem(raw.strip())
            url = canonical(raw) if not problem else raw
            if problem or url in seen:
                count.n_in += 1
                ledger.drop(STAGE, problem or "duplicate_seed", url=raw, item="record")
                continue
            seen.add(url)
            groups[partition(host_key(url), self.cfg.actors)].append(url)
        return groups

    def iter_pages(self, seeds: Iterable[str], batch: int = 16) -> Iterator[RawPage]:
        """Crawl; yield each HTML page as it is archived. Stopping early kills the actors (resumable)."""
        for _ in read_state(self.output, self.cfg.warc_prefix + "-a"):  # a damaged state: refused before Ray
            pass
        if not ray.is_initialized():
            ray.init(include_dashboard=False, ignore_reinit_error=True)
        self.output.mkdir(parents=True, exist_ok=True)
        ledger = Ledger()
        groups = self._plan(seeds, ledger)
        shares = [Share(i, tuple(g), f"{self.cfg.warc_prefix}-a{i:02d}") for i, g in enumerate(groups)]
        cfg = self.cfg.model_dump()
        # an actor fetches for at most hosts_in_flight hosts at once, one URL at a time per host
        gate = start_gate(
            self.cfg.min_delay_s, self.cfg.per_host_concurrency, fetches=len(groups) * self.cfg.hosts_in_flight
        )
        stage = Stage(STAGE, Resources(cpus=self.cfg.actor_num_cpus), unit_label="page")
        actor_cls = CrawlActor.options(**stage.options())
        actors_started = [0] * len(shares)  # per share; names each actor at the gate: <share>.<n>
        delivered: list[set[str]] = [set() for _ in shares]  # frontier URLs whose page was yielded
        phase = ["add"] * len(shares)  # the call in flight of each share: add -> next_batch ... -> finish

        def holder(share: Share) -> str:
            return f"{share.name}.{actors_started[share.index]}"

        def start(share: Share) -> None:
            actors_started[share.index] += 1
            actor: Any = actor_cls.remote(share.index, len(shares), cfg, str(self.output), gate, holder(share))
            self._actors[share.index] = actor
            phase[share.index] = "add"
            runner.submit(share, partial(actor.add.remote, list(share.seeds)), actor)

        def lost(share: Share, actor: Any, launch: Any) -> None:
            # a fresh actor resumes the share from the closed WARC files once the gate forgot the dead one
            ray.kill(actor, no_restart=True)
            ray.get(gate.forget.remote(holder(share)))
            start(share)

        def pages_of(result: Any) -> int:
            return len(result["pages"]) if isinstance(result, dict) and "pages" in result else 0

        runner = Runner(stage, progress=self.progress, on_lost=lost, count=pages_of)
        self._actors = [None] * len(shares)
        try:
            for share in shares:
                start(share)
            for share, actor, res in runner.completed(writes_to=lambda _: str(self.output)):
                i = share.index
                if phase[i] == "finish":
                    part = Ledger.from_dict(res["ledger"])
                    part.rejects = res["rejects"]
                    ledger.merge(part)
                    continue
                for url, page in res["pages"] if phase[i] == "next_batch" else []:
                    if url in delivered[i]:  # fetched again by the replacement of a dead actor
                        continue
                    delivered[i].add(url)
                    self.result.pages += 1
                    yield page
                if runner.stopping:
                    continue
                phase[i] = "finish" if phase[i] == "next_batch" and res["done"] else "next_batch"
                call = actor.finish.remote if phase[i] == "finish" else partial(actor.next_batch.remote, batch)
                runner.submit(share, call, actor)
            assert all(p == "finish" for p in phase), "every share was crawled to its end"
        finally:
            runner.close()
            for a in [*self._actors, gate]:
                if a is not None:
                    ray.kill(a)
            self._actors = []
        self.result.ledger = ledger
        self.result.warcs = [w for w, _ in closed_segments(self.output, self.cfg.warc_prefix + "-a")]
        (self.output / "crawl_stats.json").write_text(ledger.dumps([STAGE]), encoding="utf-8")

    def run(self, seeds: Iterable[str]) -> CrawlResult:
        """Crawl to the end without keeping pages in memory (they are in the WARCs)."""
        for _ in self.iter_pages(seeds):
            pass
        return self.result


def warc_paths(output: str | Path, prefix: str = "crawl") -> list[str]:
    """The closed crawl WARC files of an output folder, as build inputs."""
    return [str(w) for w, _ in closed_segments(Path(output), prefix + "-a") if w.name.endswith(WARC_SUFFIX)]


def load_stats(output: str | Path) -> dict[str, Any]:
    return json.loads((Path(output) / "crawl_stats.json").read_text(encoding="utf-8"))
