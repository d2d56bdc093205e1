"""What the crawler may contact: http(s) URLs without credentials, on hosts whose every address is public.

`url_problem(url)` refuses non-http(s) schemes (`bad_scheme`), URLs with user:password (`credentials_in_url`)
and unparseable ones (`bad_url`). `AddressPolicy` refuses private, loopback, link-local, multicast,
reserved, site-local and unspecified addresses unless they fall in an allow-listed CIDR; an IPv6 address
that carries an IPv4 one (IPv4-mapped, NAT64 64:ff9b::/96, 6to4 2002::/16) is judged by that IPv4 address.

DNS rebinding: `SafeNetworkBackend` is the httpx/httpcore network backend of every client we make. It
resolves the host itself, checks every address, and connects to the checked address, so the address that
was checked is the one contacted (a second lookup can't swap in 127.0.0.1). `make_client` builds that
client: no cookies stored or sent, no environment proxies or .netrc, no automatic redirects.
"""

from __future__ import annotations

import asyncio
import http.cookiejar
import ipaddress
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

import httpcore
import httpx

from crawl.live.config import CrawlConfig

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class UnsafeAddress(Exception):
    """The host resolves to an address we must not contact (reason `unsafe_address`)."""

    reason = "unsafe_address"


class DnsFailure(Exception):
    """The host does not resolve (reason `dns_error`)."""

    reason = "dns_error"


def url_problem(url: str) -> str | None:
    """A drop reason when `url` must not be fetched on its face, else None."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return "bad_url"
    if parts.scheme.lower() not in ("http", "https"):
        return "bad_scheme"
    if not parts.hostname:
        return "bad_url"
    if parts.username is not None or parts.password is not None:
        return "credentials_in_url"
    try:  # what the HTTP client cannot send (control characters, lone surrogates) is refused here, counted
        httpx.URL(url)
    except (httpx.InvalidURL, UnicodeError):
        return "bad_url"
    return None


def host_key(url: str) -> str:
    """Politeness and partitioning key: lower-case host, plus the port when it is not the default."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower().rstrip(".")
    port = parts.port
    if port is None or (parts.scheme.lower(), port) in (("http", 80), ("https", 443)):
        return host
    return f"{host}:{port}"


NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052 well-known prefix: the last 32 bits are an IPv4 address


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for and routes to: IPv4-mapped (::ffff:a.b.c.d), NAT64
    (64:ff9b::a.b.c.d) or 6to4 (2002:AABB:CCDD::); None otherwise."""
    if ip.version != 6:
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.sixtofour


class AddressPolicy:
    def __init__(self, allow: Iterable[str] = ()):
        self.allow = [ipaddress.ip_network(c, strict=False) for c in allow]

    def allowed(self, ip: IPAddress) -> bool:
        if any(ip in net for net in self.allow if net.version == ip.version):
            return True
        inner = embedded_ipv4(ip)
        if inner is not None:  # judged by the IPv4 address it reaches (64:ff9b::10.0.0.1 is 10.0.0.1)
            return self.allowed(inner)
        # is_global alone lets through IPv6 reserved space (IPv4-compatible ::127.0.0.1) and the deprecated
        # site-local fec0::/10
        return ip.is_global and not ip.is_multicast and not ip.is_reserved and not getattr(ip, "is_site_local", False)

    async def resolve(self, host: str, port: int) -> list[str]:
        """Resolve `host` and check every address; return them (IP literals skip DNS).

        Raises UnsafeAddress when any address is refused, DnsFailure when nothing resolves."""
        try:
            literal = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            literal = None
        if literal is not None:
            addrs = [literal]
        else:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except (socket.gaierror, UnicodeError) as e:
                raise DnsFailure(f"{host}: {e}") from None
            addrs = [ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos]
            if not addrs:
                raise DnsFailure(f"{host}: no address")
        bad = [str(a) for a in addrs if not self.allowed(a)]
        if bad:
            raise UnsafeAddress(f"{host} resolves to refused address(es) {', '.join(bad)}")
        return [str(a) for a in addrs]


class SafeNetworkBackend(httpcore.AsyncNetworkBackend):
    """httpcore backend that checks the resolved addresses and connects to a checked one."""

    def __init__(self, policy: AddressPolicy):
        self.policy = policy
        self.inner = httpcore.AnyIOBackend()

    async def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        addrs = await self.policy.resolve(host, port)
        last: Exception | None = None
        for addr in addrs:
            try:
                return await self.inner.connect_tcp(
                    addr, port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as e:
                last = e
        assert last is not None
        raise last

    async def connect_unix_socket(self, *args, **kwargs):
        raise UnsafeAddress("unix sockets are never used by the crawler")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class _SafeTransport(httpx.AsyncHTTPTransport):
    def __init__(self, policy: AddressPolicy, max_connections: int):
        super().__init__(trust_env=False)
        # Same pool httpx builds, plus our network backend (httpx has no public argument for it).
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=5.0,
            network_backend=SafeNetworkBackend(policy),
        )


def make_client(cfg: CrawlConfig, policy: AddressPolicy | None = None) -> httpx.AsyncClient:
    """A cookie-less, credential-less client whose every connection passes `policy`."""
    policy = policy or AddressPolicy(cfg.allow_private)
    timeout = httpx.Timeout(connect=cfg.connect_timeout_s, read=cfg.read_timeout_s, write=cfg.read_timeout_s, pool=None)
    client = httpx.AsyncClient(
        transport=_SafeTransport(policy, max_connections=max(16, cfg.hosts_in_flight * cfg.per_host_concurrency)),
        timeout=timeout,
        follow_redirects=False,
        trust_env=False,
        headers={"User-Agent": cfg.user_agent},
    )
    # a jar that accepts no cookie from any domain: nothing is ever stored, so nothing is ever sent
    client.cookies.jar.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    return client
