"""Structured logs: one event per line, `key=value` pairs, through the `logging` module.

    log_event(logger, "sample_done", source="crm", seconds=0.42)
    -> ts=2026-01-01T10:00:00.123Z level=info logger=fabwatch.scheduler event=sample_done
       source=crm seconds=0.42   (on one line)

DSNs and URLs are logged only through `safe_dsn`, which hides the password and the values of query
parameters named like credentials (`?api_key=***`); `mask_secrets` does the latter in any text
(an error message that quotes a URL).
"""

import logging
import re
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO
from urllib.parse import urlsplit

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

_BARE = re.compile(r"^[A-Za-z0-9_.:/@+\-,\[\]()]+$")
_FIELDS = "fabwatch_fields"
_HANDLER = "fabwatch"


_QUERY_PARAM = re.compile(r"(?P<lead>[?&;](?P<name>[A-Za-z0-9_.\-\[\]%]+)=)(?P<value>[^&#\s'\"]*)")
"""A query parameter; its value ends at `&` or `#` (a `;` may be part of a token: `?token=ab;cd`)."""
_SECRET_NAME = re.compile(r"key|token|secret|passw|signature|credential|session|authoriz|jwt|bearer|assertion"
                          r"|code$|(^|_)(sig|pwd|pass|auth)$")
"""A query parameter whose (lowercased) name matches holds a credential: `key`, `api_key`, `apiKey`,
`access_token`, `client_secret`, `password`, `sig` (Azure SAS), `X-Amz-Signature`, `authorization`,
`id_jwt`, `client_assertion`, an OAuth2 `code`..."""


def safe_dsn(dsn: str) -> str:
    """Render a DSN or URL with its password and credential-like query values hidden (`***`), fit
    for logs and tables; a file path (a cost_csv source) as it is."""
    if "://" not in dsn:
        return dsn
    if dsn.split("://", 1)[0].lower() in ("http", "https"):
        return mask_secrets(_safe_http_url(dsn))
    try:
        return mask_secrets(make_url(dsn).render_as_string(hide_password=True))
    except (ArgumentError, ValueError):
        return "<unparsable DSN>"


_AT_AFTER_AUTHORITY = re.compile(r"^[/?#][^/?#]*@")
"""An `@` in the first segment after the authority: the rest of a password holding `/`, `?` or `#`."""


def ambiguous_userinfo(url: str) -> bool:
    """Whether an HTTP URL's password holds an unescaped `/`, `?` or `#`: parsers then cut the
    authority there and read the password's start as the port (`http://u:1234/5@host/` is host `u`,
    port 1234), so the password reaches logs and DNS as a host name."""
    try:
        netloc = urlsplit(url).netloc
    except ValueError:
        return False
    start = url.find("://") + 3
    return "@" not in netloc and ":" in netloc and bool(_AT_AFTER_AUTHORITY.match(url[start + len(netloc):]))


def _safe_http_url(url: str) -> str:
    """Hide the password of an HTTP URL's userinfo (the whole userinfo when it has no password: a
    token given as the user name), parsed as aiohttp parses it (the last `@`), or as written when the
    password holds a `/`, `?` or `#` that cut the authority short."""
    start = url.index("://") + 3
    if ambiguous_userinfo(url):
        cut = url.index("@", start)
        return f"{url[:start]}{url[start:cut].split(':', 1)[0]}:***{url[cut:]}"
    netloc = urlsplit(url).netloc
    userinfo, at, host = netloc.rpartition("@")
    if not at:
        return url
    user, _, password = userinfo.partition(":")
    if not password:  # `https://TOKEN@host`, `https://TOKEN:@host`: the user name is the credential
        return f"{url[:start]}***@{host}{url[start + len(netloc):]}"
    return f"{url[:start]}{user}:***@{host}{url[start + len(netloc):]}"


def mask_secrets(text: str) -> str:
    """Replace the values of credential-like query parameters (`?key=...`) anywhere in `text`."""
    def mask(match: re.Match[str]) -> str:
        name = match["name"].lower().replace("-", "_")
        if _SECRET_NAME.search(name) and match["value"]:
            return f"{match['lead']}***"
        # Not a credential: a `;`-separated parameter may follow in the value (`?page=1;token=...`).
        return match["lead"] + _QUERY_PARAM.sub(mask, match["value"])

    return _QUERY_PARAM.sub(mask, text)


def quote(value: object) -> str:
    """Quote a value when it holds spaces, quotes, `=` or newlines, so each line stays parseable."""
    text = value if isinstance(value, str) else _scalar(value)
    if text and _BARE.match(text):
        return text
    escaped = (text.replace("\\", "\\\\").replace('"', '\\"')
               .replace("\n", "\\n").replace("\r", "\\r"))
    return f'"{escaped}"'


def _scalar(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


class KeyValueFormatter(logging.Formatter):
    """Format each record as one line of `key=value` pairs, the traceback included as `exc=`."""

    def format(self, record: logging.LogRecord) -> str:
        """Render the record as a single line."""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        pairs: list[tuple[str, object]] = [
            ("ts", f"{stamp}.{int(record.msecs):03d}Z"),
            ("level", record.levelname.lower()),
            ("logger", record.name),
            ("event", record.getMessage()),
        ]
        fields: Mapping[str, object] = getattr(record, _FIELDS, {})
        pairs.extend(fields.items())
        if record.exc_info:
            pairs.append(("exc", self.formatException(record.exc_info)))
        return " ".join(f"{key}={quote(value)}" for key, value in pairs)


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO,
              exc_info: bool = False, **fields: Any) -> None:
    """Log one event with its fields; `exc_info=True` adds the current traceback."""
    if logger.isEnabledFor(level):
        logger.log(level, event, exc_info=exc_info, extra={_FIELDS: fields})


def setup_logging(level: str | int = "info", stream: TextIO | None = None) -> None:
    """Send fabwatch's (and the libraries') logs to `stream` (stderr) as key=value lines."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    handler.set_name(_HANDLER)
    root = logging.getLogger()
    for old in list(root.handlers):
        if old.get_name() == _HANDLER:  # ours, from an earlier call
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    # apscheduler logs every run at INFO, and a skipped or missed run at WARNING, which the
    # scheduler's own events (`run_skipped_still_running`, with the source) already say: errors only.
    logging.getLogger("apscheduler").setLevel(max(root.level, logging.ERROR))
    logging.getLogger("aiohttp.access").setLevel(max(root.level, logging.WARNING))
