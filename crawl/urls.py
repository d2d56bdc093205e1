"""URL normalisation shared by the image index, the extractor and URL dedup."""

from __future__ import annotations

from urllib.parse import quote, unquote, urlsplit, urlunsplit

_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalize_url(url: str) -> str:
    """Canonical form for lookups: lower-case scheme and host, no default port, no fragment, path and
    query percent-encoding made uniform (so `a%20b` and `a b` match), empty path -> '/'."""
    url = url.strip()
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower().rstrip(".")
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = host if port is None or _DEFAULT_PORTS.get(scheme) == port else f"{host}:{port}"
    path = quote(unquote(parts.path), safe="/:@!$&'()*+,;=-._~") or "/"
    query = quote(unquote(parts.query), safe="=&;/:@!$'()*+,-._~?")
    return urlunsplit((scheme, netloc, path, query, ""))
