"""Live crawling and image fetching: polite, safe HTTP fetches on Ray actors, archived to WARC.

- `CrawlConfig` (config.py): the one config section of the crawler and the image fetcher.
- `Crawler` (crawler.py): seeds -> `CrawlActor`s (frontier hash-partitioned by host) -> WARC files + a
  resumable crawl state; yields `crawl.page.RawPage`s as it goes.
- `FetchResolver` (image_fetcher.py): `urls -> {url: bytes | drop reason}` for the build's image stage,
  served by `ImageFetchActor`s partitioned the same way; fetched images are archived to WARC too.
- `HostGate` (politeness.py): per-host slots (keyed by host name and resolved address) and robots.txt
  answers, one Ray actor shared by the actors of a run, so per-host politeness holds cluster-wide.
"""
