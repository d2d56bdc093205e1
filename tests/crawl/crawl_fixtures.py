"""Fixtures of the crawler tests (imported by test_crawl_*.py; not a conftest, so the repo-wide
`tests/conftest.py` stays the one `conftest` module): the loopback test server (tests/crawl/webserver.py) and a crawl config
that allow-lists 127.0.0.1 with short timeouts."""

from __future__ import annotations

from pathlib import Path

import pytest
from webserver import TestServer, load_site

REAL = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "real"


@pytest.fixture(scope="module")
def site():
    if not REAL.exists():
        pytest.skip(f"../shared/data/real not present: the crawler tests serve its pages and photos ({REAL})")
    return load_site(REAL, n_pages=12)


@pytest.fixture()
def server(site):
    srv = TestServer(site, slow_s=2.0, big_bytes=3_000_000)
    yield srv
    srv.close()
