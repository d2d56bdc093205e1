"""Opening image bytes with Pillow: the web's raster formats only.

Pillow identifies some forty formats. A few run an external program (EPS and PostScript through
Ghostscript, when it is installed) and many are large parsers that web images never exercise (PSD,
FITS, DDS, SGI, ...). Images of a web corpus come in a handful of formats, so every decode of bytes
read from the web, from a shard or from a user's file goes through `open_image`, which tries only those
(`WEB_FORMATS`). Bytes in another format raise `PIL.UnidentifiedImageError`, as non-image bytes do;
`unsupported_format` tells the two apart from the header alone (no pixels decoded), `unidentified_reason`
names the drop.
"""

from __future__ import annotations

import io

from PIL import Image as PILImage

# JPEG (whose opener also gives MPO, the multi-picture JPEG of many cameras), PNG, GIF, WebP, AVIF, BMP,
# TIFF and ICO: what browsers show, and what the dev data holds. AVIF only where Pillow was built with it.
_WANTED = ("JPEG", "PNG", "GIF", "WEBP", "AVIF", "BMP", "TIFF", "ICO")
PILImage.init()
WEB_FORMATS: tuple[str, ...] = tuple(f for f in _WANTED if f in PILImage.OPEN)


def open_image(data: bytes) -> PILImage.Image:
    """`PIL.Image.open` of `data`, trying the formats of `WEB_FORMATS` only (lazy: no pixels decoded yet)."""
    return PILImage.open(io.BytesIO(data), formats=WEB_FORMATS)


def unsupported_format(data: bytes) -> str | None:
    """The Pillow format name of `data` when Pillow knows it but it is not one of `WEB_FORMATS`, else None
    (bytes that `open_image` opens, or that are no image Pillow knows). Reads the header only."""
    try:
        with PILImage.open(io.BytesIO(data)) as im:
            fmt = im.format
    except Exception:  # noqa: BLE001 - not an image, a bomb, or a header parser of a format we never decode
        return None
    return fmt if fmt is not None and fmt not in WEB_FORMATS else None


def unidentified_reason(data: bytes) -> str:
    """The drop reason of bytes `open_image` does not open: `unsupported_image_format` (a format outside
    `WEB_FORMATS`, never decoded) or `not_an_image`."""
    return "unsupported_image_format" if unsupported_format(data) else "not_an_image"
