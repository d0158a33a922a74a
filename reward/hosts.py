"""Where requests may go: the host policy a client checks before anything leaves the machine.

Patient dialogues, even de-identified, must go only where a recipe says, never somewhere by accident (a stale
OPENAI_BASE_URL, a copied recipe, a typo in a default). The rules:
- a local server (loopback names and addresses) is always allowed: nothing leaves the machine;
- a remote host is allowed when the recipe's `allowed_hosts` lists it; with no list, when the recipe itself names
  the URL (a base_url written in the recipe counts; one from an environment variable or a default does not). A list,
  once given, is the whole policy: a base_url outside it is refused even when written in the recipe;
- a remote host needs https, unless its `allowed_hosts` entry is itself an `http://` URL: a deliberate opt-in for
  a server on a trusted network (a vLLM node in the same cluster).

Entries: `api.openai.com` (any port), `gateway.example.com:8443` (that port), `*.openai.azure.com` (any
sub-domain, not the bare domain), `http://10.0.0.5:8000` (plain HTTP allowed to that host and port), or any
`https://host/path` URL (its host; the path is ignored).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence
from urllib.parse import urlsplit

from .urls import is_local_host, public_url


class HostNotAllowed(ValueError):
    """A URL the host policy refuses (or cannot read); the message names the recipe keys and what to do."""


@dataclass(frozen=True)
class AllowedHost:
    """One parsed `allowed_hosts` entry."""

    host: str  # lower-case, no root dot; without the "*." of a wildcard
    port: int | None  # None: any port
    wildcard: bool  # True: sub-domains of `host`, not `host` itself
    plain_http: bool  # True: written as http://, so plain HTTP to this host is allowed

    @classmethod
    def parse(cls, entry: str, setting: str) -> "AllowedHost":
        text = entry.strip() if isinstance(entry, str) else ""
        if not text or any(c.isspace() for c in text) or text.strip("*.") == "":
            raise HostNotAllowed(f"{setting}: {entry!r} is not a host; write a name such as 'api.openai.com', "
                                 f"'host:8443', '*.example.com' or 'http://10.0.0.5:8000'")
        parts = urlsplit(text if "://" in text else f"https://{text}")
        try:
            host, port = (parts.hostname or "").rstrip("."), parts.port
        except ValueError:  # a port that is not a number
            host, port = "", None
        wildcard = host.startswith("*.")
        if parts.scheme not in ("http", "https") or not host or "*" in host[2 if wildcard else 0:] or \
                ("://" not in text and parts.path):
            raise HostNotAllowed(f"{setting}: cannot read {entry!r} as a host; write a name such as "
                                 f"'api.openai.com', 'host:8443', '*.example.com' or 'http://10.0.0.5:8000'")
        return cls(host[2:] if wildcard else host, port, wildcard, parts.scheme == "http")

    def __str__(self) -> str:  # never the entry as written: it might be a URL with user-info
        scheme = "http://" if self.plain_http else ""
        return f"{scheme}{'*.' if self.wildcard else ''}{self.host}{f':{self.port}' if self.port is not None else ''}"

    def matches(self, host: str, port: int | None) -> bool:
        if self.port is not None and port != self.port:
            return False
        return host.endswith("." + self.host) if self.wildcard else host == self.host


def check_endpoint(url: str, allowed_hosts: Sequence[str] | None = None, *, named_in_recipe: bool = True,
                   config_name: str = "judge") -> str:
    """Raise HostNotAllowed unless the policy (module docstring) lets requests go to `url`; return
    `public_url(url)`. named_in_recipe: whether the recipe (or the calling code) wrote this URL itself, as opposed
    to taking it from the environment (OPENAI_BASE_URL) or a default nobody wrote down. config_name: where the
    endpoint is configured, for the messages ("judge" -> "judge.base_url", "judge.allowed_hosts")."""
    where, setting = f"{config_name}.base_url", f"{config_name}.allowed_hosts"
    if isinstance(allowed_hosts, str):  # a bare string would be read as a list of one-letter hosts
        raise HostNotAllowed(f"{setting} must be a list of hosts, got the string {allowed_hosts!r}")
    entries = [AllowedHost.parse(e, setting) for e in allowed_hosts] if allowed_hosts is not None else None
    try:
        parts = urlsplit(url.strip())
        host, port, shown = (parts.hostname or "").lower().rstrip("."), parts.port, public_url(url)
    except (ValueError, AttributeError):
        raise HostNotAllowed(f"{where} is not a valid URL; expected e.g. https://api.openai.com/v1") from None
    if parts.scheme.lower() not in ("http", "https") or not host:
        raise HostNotAllowed(f"{where} {shown!r} must be an http(s) URL with a host, e.g. https://api.openai.com/v1")
    if is_local_host(host):
        return shown  # nothing leaves the machine
    listed = [e for e in entries if e.matches(host, port)] if entries is not None else []
    if entries is not None and not listed:
        raise HostNotAllowed(f"{where} {shown!r} points at {host}, which {setting} does not list "
                             f"({', '.join(map(str, entries)) or 'empty'}): add {host!r} to {setting} "
                             f"if data may be sent there, or point {where} at an allowed host")
    if entries is None and not named_in_recipe:
        raise HostNotAllowed(f"{where} {shown!r} is not written in the recipe (it came from the environment or a "
                             f"default), so data would go to {host} without the recipe saying so: write base_url in "
                             f"the recipe's {config_name} block, or list {host!r} in {setting}")
    if parts.scheme.lower() != "https" and not any(e.plain_http for e in listed):
        port_part = f":{port}" if port is not None else ""
        raise HostNotAllowed(f"{where} {shown!r} would send data unencrypted to the non-local host {host}: use "
                             f"https://, or, for a server on a trusted network, list 'http://{host}{port_part}' in "
                             f"{setting}")
    return shown
