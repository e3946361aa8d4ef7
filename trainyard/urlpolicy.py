"""Which URLs a data manifest may fetch: scheme, host allowlist and every resolved address, re-checked on redirects."""

from __future__ import annotations

import dataclasses
import functools
import http.client
import ipaddress
import socket
import urllib.request
from urllib.parse import SplitResult, urljoin, urlsplit

from trainyard.errors import ConfigError, TrainyardError

# Schemes trainyard knows how to fetch; url_schemes may only narrow this (file:// needs url_allow_file instead).
FETCHABLE = ("https", "http", "s3")
# Instance metadata and credential endpoints (AWS/GCP/Azure/OpenStack IMDS, ECS task role, EKS pod identity, Alibaba).
# They hand out cloud credentials, no data lives there, so they are refused even with url_allow_private.
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254", "169.254.170.2", "169.254.170.23", "100.100.100.200", "fd00:ec2::254", "fd00:ec2::23",
))
# IPv6 forms that carry an IPv4 address the connection really reaches (NAT64); ::ffff:0:0/96 and 6to4 are unwrapped
# through ipaddress's own properties.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")

_SETTING = {
    "loopback": ("url_allow_loopback", "to fetch from this machine"),
    "private": ("url_allow_private", "to fetch from private networks"),
    "link-local": ("url_allow_private", "to fetch from link-local addresses"),
}


class UrlPolicyError(TrainyardError):
    """A URL is refused by the [trainyard] url_* policy."""

    exit_code = 2


class HostLookupError(UrlPolicyError):
    """A URL's host name could not be resolved, so its addresses could not be checked."""


def redact(url: str) -> str:
    """The URL with any user:password@ replaced, so refusals never echo credentials into logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]).geturl()


def address_kind(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why an address is not plain public internet: None for a global address, else its kind."""
    if ip.version == 6:
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return address_kind(embedded)
    if ip in METADATA_ADDRESSES:
        return "metadata"
    # 0.0.0.0 reaches this machine on Linux, so the whole "this network" block counts as unspecified.
    if ip.is_unspecified or (ip.version == 4 and ip in _THIS_NETWORK):
        return "unspecified"
    if ip.is_multicast:
        return "multicast"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_reserved:
        return "reserved"
    # RFC 1918, fc00::/7, and the other non-global blocks (shared 100.64/10, documentation, benchmarking).
    if ip.is_private or not ip.is_global:
        return "private"
    return None


def _enable(name: str) -> str:
    return f"[trainyard] {name} = true (or TRAINYARD_{name.upper()}=true)"


@dataclasses.dataclass(frozen=True)
class UrlPolicy:
    """The URLs a manifest may name. Private, link-local and loopback addresses need explicit allowances.

    Link-local addresses (169.254.0.0/16, fe80::/10) count as private and need allow_private; the cloud metadata
    endpoints in METADATA_ADDRESSES, multicast, reserved and unspecified addresses are refused whatever the settings.
    allowed_hosts (exact names or "*.example.com" for any subdomain) narrows http(s) hosts; it never lifts the address
    checks. s3:// names a bucket on the store's configured endpoint, so it is not resolved or allowlisted here.
    """

    schemes: frozenset[str] = frozenset(FETCHABLE)
    allowed_hosts: frozenset[str] = frozenset()
    allow_private: bool = False
    allow_loopback: bool = False
    allow_file: bool = False

    @classmethod
    def from_settings(cls, settings=None) -> UrlPolicy:
        """Build the policy from url_schemes, url_allowed_hosts and the url_allow_* flags of Settings (parsed there)."""
        if settings is None:
            from trainyard import config

            settings = config.load()
        schemes = frozenset(settings.url_schemes)
        unknown = sorted(schemes - set(FETCHABLE) - {"file"})
        if unknown:
            raise ConfigError(f"[trainyard] url_schemes lists {', '.join(unknown)}, which trainyard cannot fetch; "
                              f"use a subset of {', '.join(FETCHABLE)} (file:// is enabled by url_allow_file)")
        hosts = frozenset(settings.url_allowed_hosts)
        for host in hosts:
            if "*" in host and not (host.startswith("*.") and "*" not in host[2:] and len(host) > 2):
                raise ConfigError(f"[trainyard] url_allowed_hosts entry {host!r} is not a host name; only a leading "
                                  "'*.' wildcard is supported, as in *.example.com")
        return cls(schemes=schemes - {"file"}, allowed_hosts=hosts, allow_private=settings.url_allow_private,
                   allow_loopback=settings.url_allow_loopback, allow_file=settings.url_allow_file)

    # -- checks ---------------------------------------------------------------------------------------------------
    def host_allowed(self, host: str) -> bool:
        """Whether host passes url_allowed_hosts (always true when the allowlist is empty)."""
        if not self.allowed_hosts:
            return True
        host = host.lower().rstrip(".")
        return any(host == pattern or (pattern.startswith("*.") and host.endswith(pattern[1:]))
                   for pattern in self.allowed_hosts)

    def check(self, url: str, *, resolved: dict[str, tuple[str, ...]] | None = None) -> SplitResult:
        """Refuse a URL the policy does not allow (UrlPolicyError); return its parts.

        http(s) hosts are resolved and every address is checked; pass a dict as resolved to reuse lookups of the same
        host within one pass (a manifest of many lines on one server).
        """
        shown = redact(url)
        if any(ord(c) < 33 or c == "\x7f" for c in url):
            raise UrlPolicyError(f"URL {shown!r} contains whitespace or control characters; percent-encode them")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise UrlPolicyError(f"URL {shown!r} is malformed ({exc}); fix the URL") from None
        scheme = parts.scheme.lower()
        if scheme == "file":
            if not self.allow_file:
                raise UrlPolicyError(f"file URL {shown!r} is refused: manifests read local files only when "
                                     f"{_enable('url_allow_file')} is set")
            if parts.netloc not in ("", "localhost") or not parts.path:
                raise UrlPolicyError(f"file URL {shown!r} must be file:///absolute/path on this machine")
            return parts
        if scheme not in FETCHABLE:
            raise UrlPolicyError(f"URL {shown!r} uses the scheme {scheme or '(none)'!r}; trainyard fetches only "
                                 f"{', '.join(FETCHABLE)} (and file:// with url_allow_file)")
        if scheme not in self.schemes:
            raise UrlPolicyError(f"URL {shown!r} uses the scheme {scheme!r}, which [trainyard] url_schemes "
                                 f"({', '.join(sorted(self.schemes)) or 'empty'}) does not allow; add it there "
                                 "(or to TRAINYARD_URL_SCHEMES)")
        if "@" in parts.netloc:
            raise UrlPolicyError(f"URL {shown!r} carries credentials (user:password@); credentials never go in "
                                 "manifests: use a presigned URL, or s3:// with the store's credentials")
        if not parts.hostname:
            raise UrlPolicyError(f"URL {shown!r} has no host; write it as {scheme}://host/path")
        if scheme == "s3":
            if port is not None or not parts.path.strip("/"):
                raise UrlPolicyError(f"URL {shown!r} must be s3://bucket/key (a bucket and an object key, no port)")
            return parts
        if not self.host_allowed(parts.hostname):
            raise UrlPolicyError(f"host {parts.hostname!r} of URL {shown!r} is not in [trainyard] url_allowed_hosts "
                                 f"({', '.join(sorted(self.allowed_hosts))}); add it there (or to "
                                 "TRAINYARD_URL_ALLOWED_HOSTS), e.g. as *.its-domain")
        host = parts.hostname
        if resolved is not None and host in resolved:
            return parts
        addresses = self.resolve(host, port or (443 if scheme == "https" else 80), url=url)
        if resolved is not None:
            resolved[host] = addresses
        return parts

    def resolve(self, host: str, port: int, *, url: str | None = None) -> tuple[str, ...]:
        """Resolve host and refuse it if ANY of its addresses is not allowed; return the addresses."""
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise HostLookupError(f"cannot resolve host {host!r} of URL {redact(url or host)!r} ({exc}); check the "
                                  "host name and this machine's DNS") from None
        addresses = tuple(dict.fromkeys(info[4][0] for info in infos))
        for address in addresses:
            self.check_address(address, url or host, host=host)
        return addresses

    def check_address(self, address: str, url: str, *, host: str | None = None) -> None:
        """Refuse a single IP address (as resolved, or as the socket really connected) unless an allowance covers it."""
        ip = ipaddress.ip_address(address)
        kind = address_kind(ip)
        if kind is None:
            return
        if (kind == "loopback" and self.allow_loopback) or (kind in ("private", "link-local") and self.allow_private):
            return
        via = f"host {host!r} resolves to" if host and host != address else "it is"
        if kind in _SETTING:
            name, why = _SETTING[kind]
            raise UrlPolicyError(f"URL {redact(url)!r}: {via} {address}, a {kind} address; {why} set {_enable(name)}")
        what = ("a cloud metadata endpoint, which hands out credentials" if kind == "metadata"
                else f"a {kind} address, which is never fetched")
        raise UrlPolicyError(f"URL {redact(url)!r}: {via} {address}, {what}; no setting allows it, so fix the "
                             "manifest")

    # -- urllib ---------------------------------------------------------------------------------------------------
    def opener(self) -> urllib.request.OpenerDirector:
        """A urllib opener for http(s) only, re-checking every redirect and the address each connection really hits."""
        opener = urllib.request.OpenerDirector()
        for handler in (urllib.request.ProxyHandler(), urllib.request.UnknownHandler(),
                        urllib.request.HTTPDefaultErrorHandler(), PolicyRedirectHandler(self),
                        urllib.request.HTTPErrorProcessor(), _PolicyHTTPHandler(self), _PolicyHTTPSHandler(self)):
            opener.add_handler(handler)
        return opener


class PolicyRedirectHandler(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only to an http(s) URL the policy allows, and never from https down to plain http."""

    def __init__(self, policy: UrlPolicy) -> None:
        super().__init__()
        self.policy = policy

    def http_error_302(self, req, fp, code, msg, headers):
        # urllib refuses file:// and data: targets itself, with an HTTPError; say why in the policy's words instead.
        location = headers.get("location") or headers.get("uri")
        if location:
            self._check_scheme(req, fp, urljoin(req.full_url, location))
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302

    @staticmethod
    def _check_scheme(req, fp, newurl: str) -> None:
        if urlsplit(newurl).scheme.lower() not in ("http", "https"):
            fp.close()
            raise UrlPolicyError(f"{redact(req.full_url)!r} redirects to {redact(newurl)!r}; redirects may only lead "
                                 "to http(s) URLs, so point the manifest at the data itself")

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        self._check_scheme(req, fp, newurl)
        try:
            old, new = urlsplit(req.full_url).scheme.lower(), urlsplit(newurl).scheme.lower()
            if old == "https" and new == "http":
                raise UrlPolicyError(f"{redact(req.full_url)!r} redirects to {redact(newurl)!r}, a downgrade from "
                                     "https to plain http; point the manifest at an https URL that serves the data")
            self.policy.check(newurl)
        except UrlPolicyError:
            # The redirect response is not read any further; release its connection.
            fp.close()
            raise
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _checked_connect(policy: UrlPolicy, url: str):
    """socket.create_connection, then a check of the peer address: DNS may answer differently than it did for check()."""

    def connect(address, *args, **kwargs):
        sock = socket.create_connection(address, *args, **kwargs)
        try:
            policy.check_address(sock.getpeername()[0], url, host=address[0])
        except BaseException:
            sock.close()
            raise
        return sock

    return connect


def _connection(cls, policy: UrlPolicy, req: urllib.request.Request, host, **kwargs):
    conn = cls(host, **kwargs)
    # Through a proxy the peer is the proxy itself; the target URL was checked before the request was sent.
    if not (req.has_proxy() or getattr(req, "_tunnel_host", None)):
        conn._create_connection = _checked_connect(policy, req.full_url)
    return conn


class _PolicyHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, policy: UrlPolicy) -> None:
        super().__init__()
        self.policy = policy

    def http_open(self, req):
        return self.do_open(functools.partial(_connection, http.client.HTTPConnection, self.policy, req), req)


class _PolicyHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, policy: UrlPolicy) -> None:
        super().__init__()
        self.policy = policy

    def https_open(self, req):
        return self.do_open(functools.partial(_connection, http.client.HTTPSConnection, self.policy, req), req,
                            context=self._context)
