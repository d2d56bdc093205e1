"""Make docs/report.png, the README's picture of `interloom inspect`: build the project's own sample
corpus (pipeline.sample), render its report and photograph it in headless Chromium: the page top (overview
and funnel), the quality signals with a what-if control, and an opened document of the browser.

    .venv/bin/python tests/pipeline/make_readme_screenshot.py [--output docs/report.png]
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=str(REPO / "docs" / "report.png"))
    args = parser.parse_args(argv)

    import ray
    from PIL import Image as PILImage
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    from pipeline.build import BuildConfig, build_corpus
    from pipeline.report import make_report
    from pipeline.sample import make_sample

    sys.path.insert(0, str(REPO / "tests" / "pipeline"))  # `tests` is no package (a wheel installs one)
    from conftest import chrome_options, chromium_paths

    found = chromium_paths()
    if found is None:
        raise SystemExit("chromium/chromedriver not found: apt-get install -y chromium chromium-driver")
    with tempfile.TemporaryDirectory(prefix="interloom-shot-") as tmp:
        warc = make_sample(Path(tmp) / "sample")
        corpus = Path(tmp) / "corpus"
        cfg = BuildConfig.model_validate({"ray": {"num_cpus": 2}})
        try:
            build_corpus([str(warc)], corpus, cfg, progress=True)
        finally:
            ray.shutdown()
        make_report(corpus, corpus / "report", sample=50)

        opts = chrome_options(found[0], f"{tmp}/profile", "--window-size=1100,1300", "--hide-scrollbars")
        driver = webdriver.Chrome(service=Service(found[1]), options=opts)
        try:
            driver.get((corpus / "report" / "index.html").as_uri())
            end = time.time() + 20
            while driver.execute_script("return document.body.getAttribute('data-ready')") != "1":
                if time.time() > end:
                    raise SystemExit("report did not render")
                time.sleep(0.1)
            top = driver.get_screenshot_as_png()
            # the middle: the quality signals, kept and dropped documents, thresholds with their what-if controls
            driver.execute_script(
                "var p = document.querySelector('.what-if').closest('.panel'); p.scrollIntoView();"
                "window.scrollBy(0, -40)"
            )
            signals = driver.get_screenshot_as_png()
            # the right half: the document browser sorted by images, its first document opened, images loaded
            driver.execute_script(
                "var s = document.getElementById('sort-by'); s.value = 'n_images'; s.dispatchEvent(new Event('change'));"
                "var d = document.getElementById('sort-desc'); d.checked = true; d.dispatchEvent(new Event('change'));"
                "document.querySelector('#docs article.doc button.open').click();"
            )
            art = driver.execute_script("return document.querySelector('#docs article.doc')")
            driver.execute_script("arguments[0].scrollIntoView(); window.scrollBy(0, -40)", art)
            end = time.time() + 20
            while not driver.execute_script(
                "return Array.from(arguments[0].querySelectorAll('img')).every(i => i.complete)", art
            ):
                if time.time() > end:
                    raise SystemExit("document images did not load")
                time.sleep(0.1)
            doc = driver.get_screenshot_as_png()
            shots = [PILImage.open(io.BytesIO(png)) for png in (top, signals, doc)]
            both = PILImage.new(
                "RGB", (sum(im.width for im in shots) + 16 * (len(shots) - 1), max(im.height for im in shots)), "#555"
            )
            x = 0
            for im in shots:
                both.paste(im, (x, 0))
                x += im.width + 16
            out = Path(args.output)
            out.parent.mkdir(parents=True, exist_ok=True)
            both.save(out, optimize=True)
        finally:
            driver.quit()
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
