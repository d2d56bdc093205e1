import pyarrow as pa
import pytest

from corpus.record import (
    INDEX_SCHEMA,
    Document,
    Image,
    documents_to_staged_table,
    index_row,
    make_doc_id,
    staged_table_to_documents,
)


def _doc() -> Document:
    d = Document(
        id=make_doc_id("warc:x#1"),
        url="https://a.org/p",
        source="warc:x#1",
        lang="en",
        lang_score=0.9,
        title="T",
        signals={"q": 0.5},
        meta={"x_robots_tag": "noai"},
    )
    d.append_text("first block")
    d.append_image(
        Image(
            url="https://a.org/i.jpg",
            alt="a cat",
            width=200,
            height=100,
            format="jpeg",
            sha1="ab",
            phash="0f0f0f0f0f0f0f0f",
            member="img0001.jpg",
            data=b"\xff\xd8bytes",
        )
    )
    d.append_text("second block")
    return d


def test_json_roundtrip_keeps_positions_and_drops_bytes():
    d = _doc()
    back = Document.from_json(d.to_json())
    assert back.texts == ["first block", None, "second block"]
    assert back.images[1].url == "https://a.org/i.jpg" and back.images[1].data is None
    assert back.images[0] is None and back.signals == {"q": 0.5} and back.meta == d.meta
    back.check()


def test_staged_table_roundtrip_keeps_bytes():
    d = _doc()
    [back] = staged_table_to_documents(documents_to_staged_table([d]))
    assert back.images[1].data == b"\xff\xd8bytes"
    assert back.to_dict() == d.to_dict()


def test_index_row_matches_schema_and_obelics_columns():
    row = index_row(_doc(), "part-00000-0000.tar", 0)
    t = pa.Table.from_pylist([row], schema=INDEX_SCHEMA)
    assert t.column("images").to_pylist() == [[None, "https://a.org/i.jpg", None]]
    assert t.column("texts").to_pylist() == [["first block", None, "second block"]]
    assert t.column("n_images").to_pylist() == [1]


def test_from_dict_names_missing_fields():
    with pytest.raises(ValueError, match="texts"):
        Document.from_dict({"id": "1", "url": "u", "source": "s", "images": []})


def test_keep_positions_keeps_lists_parallel():
    d = _doc()
    d.keep_positions([True, False, True])
    assert d.texts == ["first block", "second block"] and d.images == [None, None]
    d.check()
