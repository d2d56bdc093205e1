"""The one record type of interloom and its storage schemas.

A `Document` is one web page in reading order, kept as two parallel lists (the OBELICS convention):
position i holds a text block (`texts[i]`) or an image (`images[i]`), never both.

Three representations, one source of truth (this module):
- in memory: the `Document` / `Image` dataclasses below;
- in a shard: `KEY.json` = `Document.to_json()` (image bytes are separate tar members);
- at storage boundaries: pyarrow schemas, `STAGED_SCHEMA` (documents with image bytes, between build
  passes) and `INDEX_SCHEMA` (one row per document of a finished shard, OBELICS columns).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa

SCHEMA_VERSION = 1


@dataclass
class Image:
    """One image of a document. `data` holds the encoded bytes while the image travels through a build;
    it is never part of the JSON (in a shard the bytes are the tar member named `member`)."""

    url: str
    alt: str = ""
    width: int = 0
    height: int = 0
    format: str = ""  # "jpeg" | "png" | "webp" ..., lower case; empty until decoded
    sha1: str = ""  # of the stored (re-encoded) bytes
    phash: str = ""  # 64-bit perceptual hash as 16 hex chars, on the EXIF-corrected image
    member: str = ""  # member suffix inside the shard sample, e.g. "img0003.jpg"
    data: bytes | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("data")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Image:
        """An image from its JSON object; ValueError when it is not one (not an object, no url, a field of
        the wrong type)."""
        if not isinstance(d, dict):
            raise ValueError(f"an image must be a JSON object, got {type(d).__name__}")
        known = {k: d[k] for k in IMAGE_FIELDS if d.get(k) is not None}
        if "url" not in known:
            raise ValueError("an image lacks its url")
        for k, v in known.items():
            want = int if k in ("width", "height") else str
            if not isinstance(v, want) or isinstance(v, bool):
                raise ValueError(f"image field {k} must be {want.__name__}, got {v!r:.40}")
        return cls(**known)


IMAGE_FIELDS = ("url", "alt", "width", "height", "format", "sha1", "phash", "member")


@dataclass
class Document:
    """One web page as an interleaved document. Invariant: len(texts) == len(images) and, at every
    position, exactly one of texts[i] / images[i] is not None."""

    id: str
    url: str
    source: str  # e.g. "warc:<file>#<record-id>", "html:<file>", "http"
    fetched_at: str = ""  # ISO 8601
    lang: str = ""
    lang_score: float = 0.0
    title: str = ""
    texts: list[str | None] = field(default_factory=list)
    images: list[Image | None] = field(default_factory=list)
    signals: dict[str, float] = field(default_factory=dict)
    meta: dict[str, str] = field(default_factory=dict)  # source facts filters may read (e.g. x-robots-tag)

    # ---- structure helpers -------------------------------------------------------------------------
    def check(self) -> None:
        assert len(self.texts) == len(self.images), f"{self.id}: texts/images lengths differ"
        for i, (t, im) in enumerate(zip(self.texts, self.images)):
            assert (t is None) != (im is None), f"{self.id}: position {i} must hold a text or an image"

    def append_text(self, text: str) -> None:
        self.texts.append(text)
        self.images.append(None)

    def append_image(self, image: Image) -> None:
        self.texts.append(None)
        self.images.append(image)

    def keep_positions(self, keep: list[bool]) -> None:
        """Drop positions where keep[i] is False (both lists stay parallel)."""
        assert len(keep) == len(self.texts)
        self.texts = [t for t, k in zip(self.texts, keep) if k]
        self.images = [im for im, k in zip(self.images, keep) if k]

    @property
    def text_blocks(self) -> list[str]:
        return [t for t in self.texts if t is not None]

    @property
    def image_list(self) -> list[Image]:
        return [im for im in self.images if im is not None]

    @property
    def text(self) -> str:
        """All text blocks joined by blank lines: what text filters and dedup read."""
        return "\n\n".join(self.text_blocks)

    @property
    def n_words(self) -> int:
        return sum(len(t.split()) for t in self.text_blocks)

    # ---- JSON (the KEY.json member of a shard sample) ----------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "url": self.url,
            "source": self.source,
            "fetched_at": self.fetched_at,
            "lang": self.lang,
            "lang_score": self.lang_score,
            "title": self.title,
            "texts": list(self.texts),
            "images": [None if im is None else im.to_dict() for im in self.images],
            "signals": {k: float(v) for k, v in self.signals.items()},  # floats, whoever set them
            "meta": dict(self.meta),
        }

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), ensure_ascii=False, sort_keys=True).encode("utf-8")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Document:
        """A document from its JSON object; ValueError when it is not one: a field missing, texts/images not
        lists, a position holding neither or both a text and an image, a text that is not a string."""
        if not isinstance(d, dict):
            raise ValueError(f"a document must be a JSON object, got {type(d).__name__}")
        missing = [k for k in ("id", "url", "source", "texts", "images") if k not in d]
        if missing:
            raise ValueError(f"document record lacks field(s) {missing}")
        texts, images = d["texts"], d["images"]
        if not (isinstance(texts, list) and isinstance(images, list)):
            raise ValueError(f"document {d['id']!r:.40}: texts and images must be lists")
        for i, (t, im) in enumerate(zip(texts, images)):
            if (t is None) == (im is None):
                held = "neither a text nor" if t is None else "both a text and"
                raise ValueError(f"document {d['id']!r:.40}: position {i} holds {held} an image")
            if t is not None and not isinstance(t, str):
                raise ValueError(f"document {d['id']!r:.40}: text at position {i} is not a string")
        doc = cls(
            id=str(d["id"]),
            url=str(d["url"]),
            source=str(d["source"]),
            fetched_at=str(d.get("fetched_at") or ""),
            lang=str(d.get("lang") or ""),
            lang_score=float(d.get("lang_score") or 0.0),
            title=str(d.get("title") or ""),
            texts=list(d["texts"]),
            images=[None if im is None else Image.from_dict(im) for im in d["images"]],
            signals={str(k): float(v) for k, v in (d.get("signals") or {}).items()},
            meta={str(k): str(v) for k, v in (d.get("meta") or {}).items()},
        )
        if len(doc.texts) != len(doc.images):
            raise ValueError(f"document {doc.id}: texts and images have different lengths")
        return doc

    @classmethod
    def from_json(cls, raw: bytes | str) -> Document:
        """A document from its JSON; ValueError when that is not a document (see `from_dict`) or holds a lone
        surrogate escape (`"\\ud800"`: no text, and no tokenizer or UTF-8 writer takes it)."""
        d = json.loads(raw)
        escaped = _ESCAPED_SURROGATE_B.search(raw) if isinstance(raw, bytes) else _ESCAPED_SURROGATE.search(raw)
        if escaped:
            try:
                json.dumps(d, ensure_ascii=False).encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("a string holds a lone surrogate (a \\ud800-\\udfff escape)") from None
        return cls.from_dict(d)


# a JSON escape of a UTF-16 surrogate: in a valid pair (an emoji another writer escaped) or alone (not text)
_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")
_ESCAPED_SURROGATE_B = re.compile(rb"\\u[dD][89a-fA-F]")


def make_doc_id(source: str) -> str:
    """Stable document id from its source locator (file name + record id), 20 hex chars."""
    return hashlib.sha1(source.encode("utf-8")).hexdigest()[:20]


# ---- pyarrow schemas ---------------------------------------------------------------------------------
IMAGE_STRUCT = pa.struct(
    [
        ("url", pa.string()),
        ("alt", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("format", pa.string()),
        ("sha1", pa.string()),
        ("phash", pa.string()),
        ("member", pa.string()),
    ]
)
STAGED_IMAGE_STRUCT = pa.struct(list(IMAGE_STRUCT) + [("data", pa.binary())])

_DOC_FIELDS = [
    ("id", pa.string()),
    ("url", pa.string()),
    ("source", pa.string()),
    ("fetched_at", pa.string()),
    ("lang", pa.string()),
    ("lang_score", pa.float64()),
    ("title", pa.string()),
    ("texts", pa.list_(pa.string())),
]

# Documents with their image bytes, as passed between build passes (unit outputs -> dedup -> write).
STAGED_SCHEMA = pa.schema(
    _DOC_FIELDS
    + [
        ("images", pa.list_(STAGED_IMAGE_STRUCT)),
        ("signals", pa.string()),  # JSON object name -> float
        ("meta", pa.string()),  # JSON object name -> str
    ]
)

# One row per document of a finished shard. `texts` and `images` (URLs) are the OBELICS columns, so
# `datasets.load_dataset("parquet", data_files="CORPUS/index/*.parquet")` reads a corpus.
INDEX_SCHEMA = pa.schema(
    _DOC_FIELDS
    + [
        ("images", pa.list_(pa.string())),  # image URL at image positions, null at text positions
        ("image_members", pa.list_(pa.string())),  # tar member suffix at image positions
        ("image_meta", pa.list_(IMAGE_STRUCT)),  # full image record at image positions
        ("n_images", pa.int32()),
        ("n_words", pa.int32()),
        ("signals", pa.string()),  # JSON object name -> float
        ("shard", pa.string()),
        ("offset", pa.int64()),  # sample position inside the shard
    ]
)


def in_index_types(table: pa.Table) -> pa.Table:
    """An index table (any subset of INDEX_SCHEMA's columns) cast to the writer's column types: an index
    whose column has another type (n_words as text) raises pa.ArrowException, an unknown column KeyError."""
    return table.cast(pa.schema([INDEX_SCHEMA.field(c) for c in table.column_names]))


def _image_row(im: Image | None, with_data: bool) -> dict[str, Any] | None:
    if im is None:
        return None
    row = im.to_dict()
    if with_data:
        row["data"] = im.data
    return row


def documents_to_staged_table(docs: list[Document]) -> pa.Table:
    rows = {name: [] for name in STAGED_SCHEMA.names}
    for d in docs:
        rows["id"].append(d.id)
        rows["url"].append(d.url)
        rows["source"].append(d.source)
        rows["fetched_at"].append(d.fetched_at)
        rows["lang"].append(d.lang)
        rows["lang_score"].append(float(d.lang_score))
        rows["title"].append(d.title)
        rows["texts"].append(list(d.texts))
        rows["images"].append([_image_row(im, True) for im in d.images])
        rows["signals"].append(json.dumps({k: float(v) for k, v in d.signals.items()}, sort_keys=True))
        rows["meta"].append(json.dumps(d.meta, sort_keys=True))
    return pa.Table.from_pydict(rows, schema=STAGED_SCHEMA)


def staged_table_to_documents(table: pa.Table) -> list[Document]:
    docs = []
    for r in table.to_pylist():
        images: list[Image | None] = []
        for im in r["images"]:
            if im is None:
                images.append(None)
            else:
                image = Image.from_dict(im)
                image.data = im.get("data")
                images.append(image)
        docs.append(
            Document(
                id=r["id"],
                url=r["url"],
                source=r["source"],
                fetched_at=r["fetched_at"] or "",
                lang=r["lang"] or "",
                lang_score=r["lang_score"] or 0.0,
                title=r["title"] or "",
                texts=list(r["texts"]),
                images=images,
                signals={str(k): float(v) for k, v in json.loads(r["signals"] or "{}").items()},
                meta=json.loads(r["meta"] or "{}"),
            )
        )
    return docs


def index_row(doc: Document, shard: str, offset: int) -> dict[str, Any]:
    return {
        "id": doc.id,
        "url": doc.url,
        "source": doc.source,
        "fetched_at": doc.fetched_at,
        "lang": doc.lang,
        "lang_score": float(doc.lang_score),
        "title": doc.title,
        "texts": list(doc.texts),
        "images": [None if im is None else im.url for im in doc.images],
        "image_members": [None if im is None else im.member for im in doc.images],
        "image_meta": [_image_row(im, False) for im in doc.images],
        "n_images": len(doc.image_list),
        "n_words": doc.n_words,
        "signals": json.dumps({k: float(v) for k, v in doc.signals.items()}, sort_keys=True),
        "shard": shard,
        "offset": offset,
    }
