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
