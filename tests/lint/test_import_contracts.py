"""The import contracts of pyproject.toml (the layers of docs/design.md) hold on the code, and break when a
forbidden import is added: checked by the real `lint-imports` on a copy of the packages."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ["corpus", "crawl", "filters", "pipeline", "train"]


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lint-imports")
    return subprocess.run(
        [str(exe), "--no-cache", "--config", str(root / "pyproject.toml")],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def tree(tmp_path) -> Path:
    """A copy of the packages and pyproject.toml, imported from the copy only."""
    for pkg in PACKAGES:
        shutil.copytree(REPO / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _add_import(path: Path, line: str) -> None:
    text = path.read_text()
    head, sep, rest = text.partition("from __future__ import annotations\n")
    path.write_text(head + sep + line + "\n" + rest if sep else line + "\n" + text)


def test_the_contracts_hold(tree):
    out = lint_imports(tree)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


CONTRACT = "layers: pipeline on crawl | filters | train on corpus"


@pytest.mark.parametrize(
    ("module", "forbidden", "shown"),
    [
        ("corpus/record.py", "import filters.registry", "corpus.record -> filters.registry"),
        ("corpus/stats.py", "from pipeline import build", "corpus.stats -> pipeline.build"),
        ("corpus/steps.py", "import train.config", "corpus.steps -> train.config"),
        ("crawl/page.py", "import pipeline.report", "crawl.page -> pipeline.report"),
        ("train/batch.py", "import crawl.urls", "train.batch -> crawl.urls"),
    ],
)
def test_a_forbidden_import_breaks_the_layers(tree, module, forbidden, shown):
    _add_import(tree / module, forbidden)
    out = lint_imports(tree)
    assert out.returncode != 0
    assert f"{CONTRACT} BROKEN" in out.stdout, out.stdout
    assert shown in out.stdout, out.stdout
