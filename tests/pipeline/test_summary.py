"""The end-of-build summary's notes on funnels shaped like real builds' (no Ray): which stages removed most
pages and, for a small corpus, which settings decided it."""

from __future__ import annotations

from corpus.config import load_config
from pipeline.build import BuildConfig
from pipeline.summary import explain, run_errors


def _stage(name: str, n_in: int, drops: dict[str, int]) -> dict:
    return {"name": name, "in": n_in, "out": n_in - sum(drops.values()), "drops": drops}


def test_a_common_crawl_like_funnel_suggests_fetching_images():
    """WARCs that hold few of their pages' images: the image line says so and names images.fetch."""
    stats = {
        "stages": [
            _stage("read", 120, {"record_type:request": 80}),
            _stage("extract", 40, {"no_main_content": 2}),
            _stage("language", 38, {}),
            _stage("images", 38, {}),
            _stage("image_count", 38, {"too_few_images": 36}),
        ],
        "items": {"images/image": {"in": 90, "out": 4, "drops": {"image_not_in_source": 86}}},
        "counters": {"errors/extract_timeout": 0},
    }
    notes = explain(stats, BuildConfig())
    assert notes[0] == (
        "2 of 40 pages kept (5%); most removed by: image_count 36 (too_few_images 36); extract 2 (no_main_content 2)"
    )
    assert notes[1] == (
        "image_count removed 36 of 38 (too_few_images 36): these inputs hold few of their pages' "
        "images (86 of the 90 images their pages show are not in them); fetch them with "
        "`--set images.fetch=true` or lower filters.image_count.min_images (now 1)"
    )
    assert notes[2].startswith("extract removed 2 of 40 (no_main_content 2): trafilatura found no main content")
    assert run_errors(stats) == {}
    # with fetching on, the advice is the threshold and the image rules, not fetching
    fetched = explain(stats, load_config(BuildConfig, None, ["images.fetch=true"]))
    assert "images.fetch" not in fetched[1] and "image_not_in_source 86" in fetched[1]


def test_a_large_share_kept_gets_no_advice_and_errors_are_counted():
    stats = {
        "stages": [_stage("extract", 10, {"no_main_content": 1}), _stage("c4", 9, {"c4_too_few_sentences": 2})],
        "items": {},
        "counters": {"errors/extract_timeout": 3, "extract/images": 5},
    }
    assert explain(stats, BuildConfig()) == [
        "7 of 10 pages kept (70%); most removed by: c4 2 (c4_too_few_sentences 2); extract 1 (no_main_content 1)"
    ]
    assert run_errors(stats) == {"extract_timeout": 3}
    small = {**stats, "stages": [_stage("extract", 10, {}), _stage("c4", 10, {"c4_too_few_sentences": 10})]}
    assert explain(small, BuildConfig())[1] == (
        "c4 removed 10 of 10 (c4_too_few_sentences 10): decided by "
        "filters.c4.min_num_sentences=5; loosen these or set "
        "filters.c4.enabled=false"
    )


def test_pages_refused_before_extraction_get_no_trafilatura_advice():
    """Extract drops that are not no_main_content (hostile pages: too many attributes, too deep, undecodable) are
    no matter of trafilatura's focus; the note used to say it found no main content."""
    stats = {
        "stages": [_stage("extract", 10, {"too_many_attributes": 7, "too_deep": 3})],
        "items": {},
        "counters": {},
    }
    assert explain(stats, BuildConfig())[1] == (
        "extract removed 10 of 10 (too_many_attributes 7, too_deep 3): these pages were refused before extraction "
        "(broken or hostile HTML); docs/build.md lists each reason"
    )
