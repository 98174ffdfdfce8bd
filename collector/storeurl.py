"""Where a store lives: a SQLite path (the embedded default) or a PostgreSQL URL."""

from typing import Any

_SCHEMES = ("postgresql", "postgres")


def postgres_url(value: str) -> str | None:
    """The libpq URL (`postgresql://...`) of a store location that is a PostgreSQL URL, with any
    SQLAlchemy driver suffix dropped (`postgresql+psycopg://`); None for a SQLite path."""
    scheme, sep, rest = value.partition("://")
    if not sep or scheme.lower().split("+", 1)[0] not in _SCHEMES:
        return None
    return f"postgresql://{rest}"


CONNECT_TIMEOUT = 5
"""Seconds a connection to a PostgreSQL store waits for the server, at most."""
BOUNDED_WAITS: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT, "keepalives_idle": 5, "keepalives_interval": 2,
                                 "keepalives_count": 3}
"""libpq parameters of every connection to a PostgreSQL store: a server that stops answering (a
partition, a hung host) fails the call within seconds instead of hanging it and its caller's lock."""
