"""Credentials kept out of what the fleet prints, logs, stores and puts on command lines."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

MASK = "***"
# scheme://user:password@host... anywhere in a text (log lines, error messages)
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]+):(?P<secret>[^@\s/]+)@")


def mask_url(url: str) -> str:
    """``postgresql://user:***@host/db``: the password of a URL replaced, the rest kept."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return mask_text(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = f"{user}:{MASK}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def mask_text(text: str) -> str:
    """Every ``scheme://user:password@`` in a text with the password masked."""
    return _URL_PASSWORD.sub(lambda m: f"{m.group('head')}:{MASK}@", text)
