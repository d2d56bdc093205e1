"""Shared fixtures: the real third-party data in ../shared (skipped with a reason where absent) and one
local Ray instance per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "real"


def real_path(*parts: str) -> Path:
    """A path under ../shared/data/real; skips the test with a clear reason when the data is absent."""
    p = REAL.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real test data not present: {p} (tests read ../shared/data/real in place)")
    return p


@pytest.fixture(scope="session")
def real_data() -> Path:
    return real_path()


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray instance shared by the session (2 CPUs, like CI)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray


# The corpus most job tests share: every dev WARC, built once per session on the session's Ray instance.
# It keeps small and repeated archive.org images (the blackbook WARC's pages show 50-150 px images and logos
# on every page), keeps text-only pages, writes small shards (so there are many, of uneven sizes), leaves the
# text-quality filters to their own tests. Extraction needs no special time limit: pages are bounded by
# their size, and the default timeout is a safety net no test page comes near (tests compare builds byte for
# byte, test_build.py builds under a CPU hog).
DEV_SETTINGS = [
    "images.min_side=32",
    "images.max_aspect=8",
    "dedup.image_max_docs=1000",
    "filters.gopher_quality.enabled=false",
    "filters.gopher_repetition.enabled=false",
    "filters.c4.enabled=false",
    "filters.fineweb.enabled=false",
    "filters.image_count.min_images=0",
    "output.max_shard_docs=16",
]


def dev_warcs() -> list[str]:
    """The dev WARC files (not the WET/WAT of whirlwind, which a build refuses: no HTML, no images)."""
    d = real_path("dev", "warc")
    return sorted(str(p) for p in d.iterdir() if ".warc" in p.name and not p.name.endswith((".wet.gz", ".wat.gz")))


@pytest.fixture(scope="session")
def dev_corpus(tmp_path_factory, ray_local):
    """(path, stats) of the corpus built from all dev WARCs with DEV_SETTINGS and 2 workers. Read-only:
    tests that change a corpus copy it first."""
    from corpus.config import load_config
    from pipeline.build import BuildConfig, build_corpus

    out = tmp_path_factory.mktemp("dev") / "corpus"
    cfg = load_config(BuildConfig, None, ["ray.workers=2", *DEV_SETTINGS])
    stats = build_corpus(dev_warcs(), out, cfg, progress=False)
    return out, stats


@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory, ray_local) -> Path:
    """The corpus `make demo` (`interloom demo`) builds: the embedded sample WARC (pipeline/sample.py: real
    prose and real photos, planted duplicates and junk) built with the default settings, once per session."""
    from corpus.config import load_config
    from pipeline.build import BuildConfig, build_corpus
    from pipeline.sample import make_sample

    out = tmp_path_factory.mktemp("demo")
    warc = make_sample(out / "sample")
    build_corpus([str(warc)], out / "corpus", load_config(BuildConfig, None, []), progress=False)
    return out / "corpus"
