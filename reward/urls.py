"""Endpoint URLs without their secrets.

A `base_url` may carry credentials (`https://user:pass@host/v1`, `?api-key=...`, `?sig=...`). Whatever is shown
(reprs, errors, manifests, W&B configs, logs) or used as a cache key goes through `public_url`, which keeps
scheme, host, port and path and drops the user-info and the whole query: a query is where gateways put keys and
signatures under names nobody can list in advance, and an OpenAI-compatible base URL needs none to be told apart.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import parse_qsl, urlsplit, urlunsplit

LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "0.0.0.0"})


def host_of(url: str) -> str:
    """The lower-cased host name of `url` ("" when it has none), without the root dot (`localhost.`)."""
    return (urlsplit(url.strip()).hostname or "").lower().rstrip(".")


def is_local_host(host: str) -> bool:
    """Whether a host name or address is this machine. Addresses are parsed, not prefix-matched: a name such as
    `127.0.0.1.example.com` resolves wherever its owner likes."""
    host = host.lower().rstrip(".")
    if host in LOCAL_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_local(url: str) -> bool:
    """Whether `url` points at this machine (loopback names and addresses)."""
    return is_local_host(host_of(url))


def public_url(url: str | None) -> str | None:
    """`url` as it may be shown and compared: scheme and host lower-cased, no user-info, no query or fragment,
    no trailing slash on the path. None stays None."""
    if url is None:
        return None
    try:
        parts = urlsplit(url.strip())
        host = (parts.hostname or "").lower()
        if ":" in host:  # an IPv6 literal keeps its brackets
            host = f"[{host}]"
        netloc = f"{host}:{parts.port}" if parts.port is not None else host
    except ValueError:  # a bracketed host that is no address, a port that is no number: cut by hand
        return _rough_public(url.strip())
    return urlunsplit((parts.scheme.lower(), netloc, parts.path.rstrip("/"), "", ""))


_ROUGH = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(?:[^/?#]*@)?([^/?#]*)([^?#]*)")


def _rough_public(url: str) -> str:
    """What urlsplit refuses (e.g. `http://[IP地址]/v1`, text that was itself de-identified): the user-info,
    query and fragment dropped by pattern, so a secret in them still never shows."""
    match = _ROUGH.match(url)
    if match is None:
        return ""
    scheme, netloc, path = match.groups()
    return f"{scheme.lower()}://{netloc.lower()}{path.rstrip('/')}"


def has_credentials(url: str | None) -> bool:
    """Whether `url` carries user-info or a query (either may hold a secret)."""
    if not url:
        return False
    try:
        parts = urlsplit(url.strip())
    except ValueError:  # unparseable: say yes, so that callers clean it (public_url cuts it by pattern)
        return True
    return bool(parts.username or parts.password or parts.query)


def url_secrets(url: str | None) -> list[str]:
    """The parts of `url` that may be secret (user name, password, query values, the whole query), for
    redacting them from text that might echo them (a server's error message, an exception)."""
    if not url:
        return []
    parts = urlsplit(url.strip())
    found = [parts.username or "", parts.password or "", parts.query]
    found += [value for _, value in parse_qsl(parts.query, keep_blank_values=False)]
    return [s for s in found if s]
