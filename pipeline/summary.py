"""Why a corpus is as small as it is: the notes of the end-of-build summary, from the funnel and the config.

`run_errors(stats)`: outcomes the machine decided rather than the input (the `errors/...` counters, e.g. a
safety-net extraction timeout); where there are any, another run of the same build may give another corpus.

`explain(stats, cfg)`: one line naming the stages that removed most pages; when fewer than `SMALL` of the
pages survive, one line per such stage naming the settings that decided it (the thresholds the filters
declare, `filters.registry.declared_signals`) and what to change, e.g.
"image_count removed 36 of 38 (too_few_images 36): these inputs hold few of their pages' images (...);
fetch them with `--set images.fetch=true` or lower filters.image_count.min_images (now 1)".
"""

from __future__ import annotations

from typing import Any

from filters.registry import declared_signals

SMALL = 0.10  # below this share of pages kept, the summary says which settings decided it
TOP_STAGES = 3


def run_errors(stats: dict[str, Any]) -> dict[str, int]:
    """{error name: count} of the run, from the ledger counters `errors/<name>`."""
    return {k.split("/", 1)[1]: int(n) for k, n in stats.get("counters", {}).items() if k.startswith("errors/") and n}


def _reasons(stage: dict[str, Any], top: int = 3) -> str:
    ranked = sorted(stage["drops"].items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    return ", ".join(f"{reason} {n}" for reason, n in ranked)


def _thresholds(cfg: Any, section: str) -> list[str]:
    """`key=value` of the declared thresholds under config `section` (e.g. filters.gopher_quality)."""
    found: dict[str, float] = {}
    for thresholds in declared_signals(cfg.filters).values():
        for t in thresholds:
            if t["config"].startswith(section + "."):
                found[t["config"]] = t["value"]
    return [f"{k}={v:g}" for k, v in sorted(found.items())]


# item drop reasons of the image stage -> the setting that decides them
_IMAGE_SETTINGS = {
    "too_small": "images.min_side",
    "bad_aspect_ratio": "images.max_aspect",
    "too_large_bytes": "images.max_bytes",
}


def _image_hint(stats: dict[str, Any], cfg: Any) -> str:
    lower = f"lower filters.image_count.min_images (now {cfg.filters.image_count.min_images})"
    images = stats.get("items", {}).get("images/image", {"in": 0, "drops": {}})
    looked_up, drops = int(images["in"]), images["drops"]
    missing = int(drops.get("image_not_in_source", 0))
    if not cfg.images.fetch and looked_up and missing >= 0.3 * looked_up:
        return (
            f"these inputs hold few of their pages' images ({missing} of the {looked_up} images their pages "
            f"show are not in them); fetch them with `--set images.fetch=true` or {lower}"
        )
    if not looked_up:
        return f"the pages show no content image (icons, logos and trackers are left out); {lower}"
    ranked = sorted(drops.items(), key=lambda kv: (-kv[1], kv[0]))[:2]
    why = ", ".join(
        f"{reason} {n}"
        + (
            f" (by {_IMAGE_SETTINGS[reason]}={_setting(cfg, _IMAGE_SETTINGS[reason])})"
            if reason in _IMAGE_SETTINGS
            else ""
        )
        for reason, n in ranked
    )
    return (
        f"the pages show {looked_up} images and the image rules drop {sum(drops.values())} of them"
        + (f" ({why})" if why else "")
        + f"; {lower}"
    )


def _setting(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _hint(name: str, stage: dict[str, Any], stats: dict[str, Any], cfg: Any) -> str:
    base = name.split("@", 1)[0]
    drops = stage["drops"]
    if base == "extract" and (drops.get("no_image_candidates") or drops.get("no_usable_image")):  # early cuts
        parts = []
        if drops.get("no_image_candidates"):
            where = "" if cfg.images.fetch else " and is in the inputs"
            fetch = "" if cfg.images.fetch else "fetch their images with `--set images.fetch=true` or "
            parts.append(
                f"{drops['no_image_candidates']} pages show no image that passes the junk rules{where} (decided "
                f"before extraction); {fetch}lower filters.image_count.min_images "
                f"(now {cfg.filters.image_count.min_images})"
            )
        if drops.get("no_usable_image"):
            parts.append(
                f"{drops['no_usable_image']} pages hold only images that fail the image rules by their headers "
                f"(decided before extraction); lower images.min_side (now {cfg.images.min_side}) or raise "
                f"images.max_aspect (now {cfg.images.max_aspect})"
            )
        return "; ".join(parts)
    if base == "image_count":
        return _image_hint(stats, cfg)
    if base == "extract" and not drops.get("no_main_content"):  # refused pages: too large, deep, undecodable, ...
        return "these pages were refused before extraction (broken or hostile HTML); docs/build.md lists each reason"
    if base == "extract":
        return (
            f"trafilatura found no main content in many pages (navigation, index and media pages); "
            f"extract.focus=recall keeps more (now {cfg.extract.focus})"
        )
    if base == "dedup":
        return "the inputs repeat themselves; see CORPUS/dedup/ for the clusters and the dedup.* settings"
    if base in ("opt_out", "pii"):
        return "these pages say they may not be used; that is not a setting to lower"
    settings = _thresholds(cfg, f"filters.{base}")
    if settings:
        return f"decided by {', '.join(settings)}; loosen these or set filters.{base}.enabled=false"
    if hasattr(cfg.filters, base):
        return f"see the filters.{base} settings (filters.{base}.enabled=false turns the stage off)"
    return "see docs/build.md for this stage's reasons"


def explain(stats: dict[str, Any], cfg: Any) -> list[str]:
    """The summary's lines saying where the pages went and, for a small corpus, which settings decided it."""
    stages = [s for s in stats["stages"] if s["name"] != "read"]  # read turns records into pages
    if not stages:
        return []
    pages, kept = stages[0]["in"], stages[-1]["out"]
    if not pages:
        return ["no HTML page in the inputs (see the read stage's reasons)"]
    ranked = sorted((s for s in stages if s["in"] > s["out"]), key=lambda s: (s["out"] - s["in"], s["name"]))
    top = ranked[:TOP_STAGES]
    line = f"{kept} of {pages} pages kept ({kept / pages:.0%})"
    if top:
        line += "; most removed by: " + "; ".join(f"{s['name']} {s['in'] - s['out']} ({_reasons(s)})" for s in top)
    lines = [line]
    if kept < SMALL * pages:
        for s in top:
            lines.append(
                f"{s['name']} removed {s['in'] - s['out']} of {s['in']} ({_reasons(s)}): "
                f"{_hint(s['name'], s, stats, cfg)}"
            )
    return lines
