"""The image stage's look-ahead (`corpus.steps.run_steps_ahead`, `ImageStep.prefetch`): the same outcome as
one document at a time, event for event (documents, counts, rejects and their order, the text sample),
the same requests to the resolver in the same order, and a bounded look-ahead."""

import io
import random

import pytest
from PIL import Image as PILImage

from corpus.record import Document, Image
from corpus.stats import DeferredLedger, Ledger
from corpus.steps import Drop, Step, run_steps, run_steps_ahead
from crawl.images import ImageConfig, ImageStep, chain, chain_submit


class _Source:
    """Items 0..n-1; every third record before an item is a read drop recorded in the source's ledger, and
    (with `tail`) one more after the last item. Like `WarcSource.pages` it compares its count with the value
    it had at the start ("no record at all")."""

    def __init__(self, n, tail=True):
        self.n = n
        self.tail = tail

    def pages(self, ledger):
        count = ledger.stage("read")
        n_before = count.n_in
        for i in range(self.n):
            if i % 3 == 0:
                count.n_in += 1
                ledger.drop("read", "bad_record", url=f"r{i}", item="record", detail=f"before {i}")
            count.n_in += 1
            count.n_out += 1
            ledger.counters["read/records"] += 1
            yield {"id": f"d{i}", "i": i}
        if self.tail:
            count.n_in += 1
            ledger.drop("read", "bad_record", url="tail", item="record")
        if count.n_in == n_before:
            count.n_in += 1
            ledger.drop("read", "no_record_at_all", item="record")


class _Doc:
    def __init__(self, item):
        self.id = item["id"]
        self.url = f"https://ex.org/{item['i']}"
        self.i = item["i"]
        self.text = f"text of {self.id} " * 3
        self.signals = {"i": self.i}


class _Make(Step):
    name = "make"

    def process(self, item, ledger):
        ledger.counters["make/seen"] += 1
        if item["i"] % 5 == 1:
            return Drop("bad_page", f"page {item['i']}")
        if item["i"] == 7:
            raise ValueError("boom")
        return _Doc(item)


class _Log(Step):
    """Records the order of prefetch and process calls; drops some documents and counts an item kind."""

    name = "fetchy"

    def __init__(self, log, full_at=None):
        self.log = log
        self.full_at = full_at
        self.pending = set()
        self.max_pending = 0

    def prefetch(self, doc):
        self.log.append(("prefetch", doc.i))
        self.pending.add(doc.i)
        self.max_pending = max(self.max_pending, len(self.pending))

    def prefetch_full(self):
        return self.full_at is not None and len(self.pending) >= self.full_at

    def process(self, doc, ledger):
        self.log.append(("process", doc.i))
        self.pending.discard(doc.i)
        ledger.item(self.name, "thing").n_in += 2
        ledger.item(self.name, "thing").n_out += 1
        ledger.drop(self.name, "thing_gone", id=doc.id, url=doc.url, item="thing", detail=str(doc.i))
        if doc.i % 4 == 2:
            return Drop("no_things")
        return doc


class _After(Step):
    name = "after"

    def process(self, doc, ledger):
        return Drop("late", "after") if doc.i % 6 == 0 else doc


def _run(n, ahead, full_at=None, tail=True):
    log = []
    fetchy = _Log(log, full_at)
    steps = [_Make(), fetchy, _After()]
    ledger = Ledger()
    if ahead:
        held = DeferredLedger()
        out = list(run_steps_ahead(_Source(n, tail).pages(held), held, steps, ledger, 1, ahead))
    else:
        out = list(run_steps(_Source(n, tail).pages(ledger), steps, ledger))
    return [d.id for d in out], ledger, log, fetchy


@pytest.mark.parametrize("tail", [True, False])
@pytest.mark.parametrize("n", [0, 1, 2, 40])
@pytest.mark.parametrize("ahead", [1, 2, 3, 8, 100])
def test_look_ahead_gives_the_same_items_counts_and_rejects_in_the_same_order(ahead, n, tail):
    ids, ledger, log, fetchy = _run(n, 0, tail=tail)
    ids2, ledger2, log2, fetchy2 = _run(n, ahead, tail=tail)
    assert ids2 == ids and (ids or n < 3)
    assert ledger2.to_dict() == ledger.to_dict()
    assert ledger2.rejects == ledger.rejects  # rows, their order and the kept texts
    assert [x for x in log2 if x[0] == "process"] == log  # the step sees its documents in order
    assert [i for k, i in log2 if k == "prefetch"] == [i for k, i in log if k == "process"]  # each once, in order
    assert fetchy2.max_pending <= ahead


def test_look_ahead_stops_while_the_step_is_full():
    _, _, log, fetchy = _run(40, 8, full_at=2)
    assert fetchy.max_pending == 2
    assert ("prefetch", 0) in log and ("prefetch", 2) in log


def test_rejects_text_sample_is_that_of_run_steps():
    """More drops of one reason than TEXT_PER_REASON: the same rows keep their text."""
    n = 200
    _, ledger, _, _ = _run(n, 0)
    _, ledger2, _, _ = _run(n, 5)
    texts = [r["text"] for r in ledger.rejects]
    assert sum(bool(t) for t in texts) > 20
    assert [r["text"] for r in ledger2.rejects] == texts


def _jpeg(w, h, seed) -> bytes:
    rng = random.Random(seed)
    im = PILImage.new("RGB", (w, h), tuple(rng.randrange(256) for _ in range(3)))
    for _ in range(20):
        x, y = rng.randrange(w), rng.randrange(h)
        im.paste(tuple(rng.randrange(256) for _ in range(3)), (x, y, min(w, x + 40), min(h, y + 40)))
    buf = io.BytesIO()
    im.save(buf, format="JPEG")
    return buf.getvalue()


class _Fetcher:
    """A fake live fetcher: records each request (the URL lists, in order) and how many are outstanding."""

    def __init__(self, answers):
        self.answers = answers
        self.requests = []
        self.outstanding = 0
        self.max_outstanding = 0

    def fetch_many(self, urls):
        return self.submit(urls)()

    def submit(self, urls):
        self.requests.append(list(urls))
        self.outstanding += len(urls)
        self.max_outstanding = max(self.max_outstanding, self.outstanding)

        def result():
            self.outstanding -= len(urls)
            return {u: self.answers.get(u, "http_404") for u in urls}

        return result


def _in_source(urls):
    return {u: (b"not an image" if u.endswith("in-src.bin") else "image_not_in_source") for u in urls}


def _image_docs():
    pics = {f"https://h{k % 3}.org/{k}.jpg": _jpeg(200 + 10 * k, 180 + 7 * k, k) for k in range(12)}
    pics["https://h0.org/small.jpg"] = _jpeg(40, 40, 99)
    rng = random.Random(1)
    urls = [*pics, "https://h1.org/missing.jpg", "https://h2.org/in-src.bin"]
    docs = []
    for i in range(30):
        doc = Document(id=f"d{i}", url=f"https://site.org/{i}", source="t")
        doc.append_text(f"text {i}")
        for u in rng.sample(urls, rng.randrange(0, 5)):  # repeats within and across documents
            doc.append_image(Image(url=u))
        docs.append(doc)
    return pics, docs


@pytest.mark.parametrize("ahead", [0, 1, 4])
def test_image_step_look_ahead_sends_the_same_requests_and_gives_the_same_documents(ahead):
    pics, docs = _image_docs()
    results = []
    for look in (0, ahead):
        fetcher = _Fetcher(pics)
        resolver = chain(_in_source, fetcher.fetch_many, when="image_not_in_source")
        submit = chain_submit(_in_source, fetcher.submit, when="image_not_in_source") if look else None
        step = ImageStep(ImageConfig(), resolver, submit, prefetch_images=6)
        ledger = Ledger()
        fresh = [_copy(d) for d in docs]
        if look:
            held = DeferredLedger()
            out = list(run_steps_ahead(iter(fresh), held, [step], ledger, 0, look))
        else:
            out = list(run_steps(iter(fresh), [step], ledger))
        kept = [(d.id, [(im.url, im.sha1, im.phash, im.width, im.height) for im in d.image_list]) for d in out]
        results.append((kept, ledger.to_dict(), ledger.rejects, fetcher.requests, fetcher.max_outstanding))
    (kept, counts, rejects, requests, _), (kept2, counts2, rejects2, requests2, outstanding) = results
    assert kept2 == kept and any(ims for _, ims in kept)
    assert counts2 == counts and rejects2 == rejects
    assert requests2 == requests  # the same requests (URL lists), in the same order
    if ahead:
        assert outstanding <= 6 + 4  # prefetch_images, plus the last document's URLs


def _copy(doc):
    new = Document(id=doc.id, url=doc.url, source=doc.source)
    new.append_text(doc.text)
    for im in doc.image_list:
        new.append_image(Image(url=im.url))
    return new


def test_a_failed_request_sent_ahead_is_that_documents_error_and_asked_again_later():
    pics, _ = _image_docs()
    url = next(iter(pics))
    calls = []

    def submit(urls):
        calls.append(list(urls))
        n = len(calls)

        def result():
            if n == 1:
                raise RuntimeError("actor died")
            return {u: pics[u] for u in urls}

        return result

    step = ImageStep(ImageConfig(), lambda urls: submit(urls)(), submit)
    docs = []
    for i in range(2):
        doc = Document(id=f"d{i}", url=f"https://site.org/{i}", source="t")
        doc.append_text("t")
        doc.append_image(Image(url=url))
        docs.append(doc)
    ledger = Ledger()
    held = DeferredLedger()
    out = list(run_steps_ahead(iter(docs), held, [step], ledger, 0, 4))
    assert [d.id for d in out] == ["d1"] and out[0].image_list[0].sha1
    assert ledger.to_dict()["stages"][0]["drops"] == {"error:RuntimeError": 1}
    assert calls == [[url], [url]]  # d1 asked again (as without the look-ahead, where d0's failure cached nothing)
