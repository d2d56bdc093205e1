"""Sources of pages and images: WARC/HTML readers, live crawler actors, image fetcher, HTML -> Document."""
