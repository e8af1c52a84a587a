"""URLs as they may be shown: without credentials, query or fragment.

A sink URL can carry a password (``https://user:password@host/``), an API
key in its query (``?apikey=...``), or be the credential as a whole (a
Slack webhook's path).  Everything that logs a URL or puts one into an
error message goes through ``redact_url``; ``redact_urls_in`` does the same
for URLs quoted inside free text (exception messages of HTTP libraries).

Malformed URLs are the dangerous ones: a password holding a raw ``/``,
``?``, ``#`` or ``@`` makes an RFC parser see part of it as the host, the
path or the query.  So whenever an ``@`` appears anywhere but inside a
well-formed authority, everything after the scheme is hidden: showing too
little is a nuisance, showing a password is an incident.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, unquote, urlsplit

#: What replaces hidden parts.
HIDDEN = "***"

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
#: A URL inside free text: up to whitespace or a quote (repr, JSON, messages).
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>`]*")


def redact_url(url: str, *, keep_path: bool = True) -> str:
    """``scheme://host:port/path`` with userinfo shown as ``***@`` and any query
    or fragment as ``?***``; the path too is hidden unless ``keep_path``."""
    match = _SCHEME.match(url)
    scheme = match.group(0) if match else ""
    rest = url[len(scheme) :]
    end = _first_of(rest, "/?#")
    authority, tail = rest[:end], rest[end:]
    if "@" in tail:
        # An '@' outside the authority: a raw password character or a query
        # value; which one cannot be told, so nothing is shown.
        return scheme + HIDDEN
    userinfo = ""
    if "@" in authority:
        authority = authority.rpartition("@")[2]
        userinfo = HIDDEN + "@"
    cut = _first_of(tail, "?#")
    path, hidden_query = tail[:cut], cut < len(tail)
    if not keep_path and path not in ("", "/"):
        path = "/" + HIDDEN
    return scheme + userinfo + authority + path + ("?" + HIDDEN if hidden_query else "")


def redact_urls_in(text: str) -> str:
    """``text`` with every URL in it redacted, paths included: free text may
    quote a URL whose path is the credential (a Slack webhook)."""
    if "://" not in text:
        return text
    return _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0), keep_path=False), text)


def url_secrets(url: str) -> list[str]:
    """The parts of ``url`` that are credentials: user, password and userinfo
    (raw and percent-decoded) and every query value, for the log scrubber."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return [url]
    found: list[str] = []
    userinfo, at, _host = parts.netloc.rpartition("@")
    if at:
        user, _, password = userinfo.partition(":")
        found += [userinfo, user, password, unquote(user), unquote(password)]
    if parts.query:
        found.append(parts.query)
        found += [value for _name, value in parse_qsl(parts.query, keep_blank_values=True)]
        found += [piece.partition("=")[2] for piece in re.split(r"[&;]", parts.query)]
    if parts.fragment:
        found.append(parts.fragment)
    return [s for s in dict.fromkeys(found) if s]


def http_url_problem(url: str) -> str | None:
    """Why ``url`` cannot be POSTed to, as a reason that quotes no part of it
    (it may be a secret), or None when it can.  Parsed as the HTTP client will."""
    import yarl  # only the daemon's sinks need it, not `eventd scan`

    if any(c.isspace() or not c.isprintable() for c in url):
        return "holds whitespace or a control character"
    try:
        parsed = yarl.URL(url)
    except (ValueError, TypeError):
        return "is not a valid URL"
    if parsed.scheme not in ("http", "https"):
        return "must be an http:// or https:// URL"
    if not parsed.host:
        return "has no host"
    return None


def _first_of(text: str, chars: str) -> int:
    """Index of the first of ``chars`` in ``text``, else ``len(text)``."""
    found = [i for i in (text.find(c) for c in chars) if i >= 0]
    return min(found, default=len(text))
