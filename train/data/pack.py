"""Pack: EncodedDoc stream -> rows of exactly seq_len tokens.

Rows are filled greedily, in stream order. A document that does not fit the rest of a row is cut at a text
position so the row is full (never inside an image span; if an image span does not fit the rest of the row,
the row is closed with padding and the span starts the next row). Each piece is its own segment
(position_ids restart at 0). Image spans longer than seq_len were already dropped by the encoder.

Because packing is greedy and sequential, the only carry-over between rows is "the rest of document D from
token offset O": `pack_rows` yields, with every row, where the next one starts.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from train.data.encode import EncodedDoc
from train.data.read import Position


@dataclass
class Piece:
    doc: EncodedDoc
    start: int
    end: int


def cut_point(doc: EncodedDoc, start: int, limit: int) -> int:
    """Largest end <= limit such that [start, end) does not cut an image span."""
    end = min(limit, len(doc.ids))
    for im in doc.images:
        if im.start < end < im.end:
            end = im.start
    return end


def pack_rows(
    docs: Iterator[tuple[Position, EncodedDoc]], seq_len: int, first_offset: int = 0
) -> Iterator[tuple[list[Piece], Position, int]]:
    """Greedy sequential packing. Yields (pieces of one row, position, token offset) where (position,
    offset) is where the next row starts: the rest of that document, or (offset == its length) the next."""
    row: list[Piece] = []
    used = 0
    for n, (pos, doc) in enumerate(docs):
        off = first_offset if n == 0 else 0
        while off < len(doc.ids):
            end = cut_point(doc, off, off + seq_len - used)
            if end <= off:  # an image span does not fit in the rest of this row
                assert used > 0, "image spans longer than seq_len are dropped by the encoder"
                yield row, pos, off
                row, used = [], 0
                continue
            row.append(Piece(doc, off, end))
            used += end - off
            off = end
            if used == seq_len:
                yield row, pos, off
                row, used = [], 0
