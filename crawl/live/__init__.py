"""Live crawling and image fetching: polite, safe HTTP fetches on Ray actors, archived to WARC.

- `CrawlConfig` (config.py): the one config section of the crawler and the image fetcher.
- `Crawler` (crawler.py): seeds -> `CrawlActor`s (hosts hash-partitioned, so per-host politeness holds
  cluster-wide) -> WARC files + a resumable crawl state; yields `crawl.page.RawPage`s as it goes.
- `FetchResolver` (image_fetcher.py): `urls -> {url: bytes | drop reason}` for the build's image stage,
  served by `ImageFetchActor`s partitioned the same way; fetched images are archived to WARC too.
"""
