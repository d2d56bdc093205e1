"""Personal data in text blocks: e-mail addresses, phone numbers and IP addresses become placeholders.

`PIIStep` (stage "pii") rewrites every text block, replacing matches with `<EMAIL>`, `<PHONE>` and `<IP>`
(configurable), counts them in `ledger.counters["pii/email"]`, `["pii/phone"]`, `["pii/ip"]` and records
the document's total in the signal `pii_replacements`. It never drops a document.

Order: e-mails, then IPs, then phones (so an address or a dotted quad is never read as a phone number).
- e-mail: datatrove's RFC 5322-ish pattern, tried only on the run before each `@` (`email_matches`: the same
  matches in linear time; the pattern alone is quadratic in a long run of address characters);
- IP: IPv4 dotted quads and IPv6 (full or `::`-compressed), validated by `ipaddress`; with
  `only_public_ips` (datatrove's default) private, loopback and documentation ranges stay;
- phone: a candidate is digits in groups separated by single spaces, dots or hyphens, with an optional
  `+CC` prefix and `(area)` group, 7 to 15 digits in all (E.164). A candidate is a phone number when it
  starts with `+`, has a `(area)` group, or starts with a trunk `0` (national format: "030 1234567",
  "020 7946 0958"), or is NANP-shaped with hyphens/dots (555-123-4567, 555.123.4567, 555-1234). Dates
  (2024-01-15, 15.01.2024, "05.12.1972 00 UTC"), years and year ranges (1999 2000, 1999-2000), version
  numbers (1.2.3, 10.0.19041.1), thousands ("1 000 000"), digits glued to letters (v2.10), ISBNs and IBANs
  are not (false positives found on the real dev pages are regression tests).
"""

from __future__ import annotations

import bisect
import ipaddress
import re
from collections.abc import Callable, Iterable, Iterator

from corpus.record import Document
from corpus.stats import Ledger
from corpus.steps import Signal, Step
from filters.config import PIIConfig

_LOCAL_CHARS = "A-Za-z0-9!#$%&'*+/=?^_`{|}~-"
_DOMAIN = (
    r"(?:(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?|\[(?:(?:25[0-5]|"
    r"2[0-4][0-9]|[01]?[0-9][0-9]?)\.){3}(?:25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?|[A-Za-z0-9-]*[A-Za-z0-9]:)])"
)
EMAIL_RE = re.compile(rf"\b[{_LOCAL_CHARS}]+(?:\.[{_LOCAL_CHARS}]+)*@{_DOMAIN}")
_DOMAIN_RE = re.compile(_DOMAIN)
_LOCAL_RUN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+/=?^_`{|}~-.")
IPV4_RE = re.compile(
    r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
    r"(?![\w]|\.\d)"
)
IPV6_RE = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{1,4}:|:){2,7}(?::|[0-9A-Fa-f]{1,4})(?![\w:])")
PHONE_RE = re.compile(
    r"(?<![\w.+/-])"
    r"(?:\+\d{1,3}[ \u00a0.-]?)?"  # +CC
    r"(?:\(\d{1,5}\)[ \u00a0.-]?)?"  # (area)
    r"\d{1,12}(?:[ \u00a0.-]\d{1,12}){0,5}"  # digit groups, one separator between groups
    r"(?![\w/-]|\.\d)"
)
DATE_RE = re.compile(r"\d{4}[./-]\d{1,2}[./-]\d{1,2}|\d{1,2}[./-]\d{1,2}[./-]\d{2,4}")
# digit runs that look like phone numbers but are not: bank accounts and book numbers
NOT_PHONE_RE = re.compile(
    r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b"  # IBAN
    r"|\b(?i:isbn)(?:-1[03])?:?\s*[\dX][\d -]{8,16}[\dXx]\b"
)
_GROUP_SPLIT = re.compile(r"[ \u00a0.\-]+")


def is_ip(s: str, public_only: bool) -> bool:
    try:
        ip = ipaddress.ip_address(s)
    except ValueError:
        return False
    if ip.version == 6 and len(re.findall(r"[0-9A-Fa-f]+", s)) < 3:
        return False  # "::1"-like fragments and times are not worth a placeholder
    return ip.is_global if public_only else not ip.is_unspecified


def is_phone(s: str) -> bool:
    digits = sum(ch.isdigit() for ch in s)
    if not 7 <= digits <= 15 or DATE_RE.search(s):
        return False
    if s.startswith("+") or "(" in s:
        return True
    groups = [g for g in _GROUP_SPLIT.split(s) if g]
    if len(groups) >= 2 and re.fullmatch(r"0[1-9]\d{0,4}", groups[0]):
        return True
    if "-" in s or "." in s:
        seps = set(re.findall(r"[.\-]", s))
        return len(seps) == 1 and [len(g) for g in groups] in ([3, 3, 4], [3, 4])
    return False


_PHONE_CHUNK_RE = re.compile(r"[^ \u00a0]+")


def phone_spans(candidate: str) -> list[tuple[int, int]]:
    """Spans of phone numbers inside one candidate run of digit groups, left to right, longest first:
    a run like "2019 555-123-4567" holds one number after a year. Numbers start and end at spaces (never
    inside a hyphenated or dotted group, e.g. an ISBN)."""
    groups = [m.span() for m in _PHONE_CHUNK_RE.finditer(candidate)]
    spans, i = [], 0
    while i < len(groups):
        for j in range(len(groups) - 1, i - 1, -1):
            start, end = groups[i][0], groups[j][1]
            if is_phone(candidate[start:end]):
                spans.append((start, end))
                i = j + 1
                break
        else:
            i += 1
    return spans


def email_matches(text: str) -> Iterator[re.Match]:
    """`EMAIL_RE.finditer(text)`, the same matches, in time linear in the text. The regex alone tries every
    word start, each scanning the run of address characters after it: quadratic on a run without an `@`
    ("a-a-a-...", 40 KB took 36 s). A match ends its local part at an `@` (no `@` or `.`-less gap inside),
    so only the run before each `@` is tried: from its first start after any `..` (where the local part can
    begin), when the domain after the `@` matches."""
    end = 0  # where the last match ended: finditer goes on from there
    at = text.find("@")
    while at >= 0:
        if at >= end and at > 0 and text[at - 1] != "." and _DOMAIN_RE.match(text, at + 1):
            start = at
            while start > end and text[start - 1] in _LOCAL_RUN:
                start -= 1
            dots = text.rfind("..", start, at)
            for s in range(start if dots < 0 else dots + 2, at):
                m = EMAIL_RE.match(text, s)  # (fails at once where no word starts: `\b` sees text[s - 1])
                if m is not None:
                    yield m
                    end = m.end()
                    break
        at = text.find("@", max(at + 1, end))


def _whole_if(valid: Callable[[str], bool]) -> Callable[[str], list[tuple[int, int]]]:
    return lambda s: [(0, len(s))] if valid(s) else []


class PIIStep(Step):
    name = "pii"
    signals = (Signal("pii_replacements"),)

    def __init__(self, cfg: PIIConfig | None = None):
        self.cfg = cfg or PIIConfig()
        c = self.cfg
        public = c.only_public_ips
        # (counter name, candidate matches, spans to replace inside a candidate, placeholder), in this order
        rules: list[tuple[str, Callable[[str], Iterable[re.Match]], Callable[[str], list[tuple[int, int]]], str]] = []
        if c.emails:
            rules.append(("email", email_matches, _whole_if(lambda s: True), c.email_placeholder))
        if c.ips:
            rules.append(("ip", IPV4_RE.finditer, _whole_if(lambda s: is_ip(s, public)), c.ip_placeholder))
            rules.append(("ip", IPV6_RE.finditer, _whole_if(lambda s: is_ip(s, public)), c.ip_placeholder))
        if c.phones:
            rules.append(("phone", PHONE_RE.finditer, phone_spans, c.phone_placeholder))
        self.rules = rules
        self.protect = {"phone": NOT_PHONE_RE}  # candidates inside these matches are left alone

    def __getstate__(self) -> dict:
        return {"cfg": self.cfg}  # the rules hold lambdas, which do not pickle; rebuilt from the config

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["cfg"])

    def redact(self, text: str) -> tuple[str, dict[str, int]]:
        counts: dict[str, int] = {}
        for kind, matches, find_spans, placeholder in self.rules:
            protected = [m.span() for m in self.protect[kind].finditer(text)] if kind in self.protect else []
            starts = [start for start, _ in protected]  # sorted, and so are the ends (the spans do not overlap)
            out: list[str] = []
            pos = 0  # (the patterns never match an empty string)
            for m in matches(text):
                cand = m.group(0)
                before = bisect.bisect_left(starts, m.end()) - 1  # the last protected span starting before its end
                if before >= 0 and protected[before][1] > m.start():
                    continue  # inside (or across) a protected span
                spans = find_spans(cand)
                if not spans:
                    continue
                counts[kind] = counts.get(kind, 0) + len(spans)
                out.append(text[pos : m.start()])
                at = 0
                for start, end in spans:
                    out += [cand[at:start], placeholder]
                    at = end
                out.append(cand[at:])
                pos = m.end()
            if out:
                out.append(text[pos:])
                text = "".join(out)
        return text, counts

    def process(self, doc: Document, ledger: Ledger) -> Document:
        total = 0
        for i, text in enumerate(doc.texts):
            if text is None:
                continue
            doc.texts[i], counts = self.redact(text)
            for kind, n in counts.items():
                ledger.counters[f"pii/{kind}"] += n
                total += n
        doc.signals["pii_replacements"] = total
        return doc
