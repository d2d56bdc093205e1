"""`interloom crawl SEEDS --output DIR`: crawl seed URLs politely into WARC files (resumable).

SEEDS is a text file (one URL per line) or a Parquet file (`--column`, default `url`). Running the same
command again on the same output folder resumes: URLs already archived are not fetched again. The WARCs
are then a build input: `interloom build --input 'DIR/*.warc.gz' ...`.
"""

from __future__ import annotations

import argparse
import json
import sys

from corpus.config import load_config
from crawl.live.config import CrawlConfig

EXAMPLES = """\
examples:
  interloom crawl seeds.txt --output crawl/
  interloom crawl seeds.parquet --column page_url --output crawl/ --set fetch_images=true
  interloom crawl seeds.txt --output crawl/ --set follow_links=true --set max_depth=2 --set min_delay_s=2
  interloom build --input 'crawl/*.warc.gz' --output corpus/          then build the WARCs

config keys (--config YAML or --set): user_agent, min_delay_s, retries, follow_links, max_depth,
  max_pages_per_host, fetch_images, allow_private, actors, warc_max_bytes, ... (all in crawl/live/config.py;
  `interloom build --print-config` lists them with their defaults under "crawl").
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "crawl",
        help="crawl seed URLs into WARC files (robots.txt, politeness, resumable)",
        description=__doc__,
        epilog=EXAMPLES,
    )
    p.add_argument("seeds", help="text file with one URL per line (# comments allowed), or a Parquet file")
    p.add_argument(
        "--output",
        "-o",
        required=True,
        metavar="DIR",
        help="folder for WARC files, crawl state and crawl_stats.json (resumed when it exists)",
    )
    p.add_argument("--column", default="url", help="URL column of a Parquet seed file (default: url)")
    p.add_argument(
        "--config", "-c", metavar="FILE", help="YAML file with CrawlConfig keys (user_agent, min_delay_s, actors, ...)"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set min_delay_s=2 --set follow_links=true",
    )
    p.add_argument("--address", metavar="ADDR", help="Ray cluster address (default: start a local Ray instance)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import ray

    from crawl.live.crawler import Crawler, read_seeds

    cfg = load_config(CrawlConfig, args.config, args.overrides)
    seeds = read_seeds(args.seeds, args.column)
    ray.init(address=args.address, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    try:
        result = Crawler(cfg, args.output, progress=not args.no_progress).run(seeds)
    finally:
        ray.shutdown()
    stage = result.ledger.to_dict(["crawl"])["stages"][0]
    print(
        json.dumps(
            {"output": str(result.output), "warcs": len(result.warcs), "pages": result.pages, "crawl": stage},
            sort_keys=True,
        )
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="interloom")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parser.parse_args(["crawl", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.func(args) or 0)
    except ValueError as e:
        print(f"interloom crawl: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
