"""Where a store lives: a SQLite path (the embedded default) or a PostgreSQL URL."""

_SCHEMES = ("postgresql", "postgres")


def postgres_url(value: str) -> str | None:
    """The libpq URL (`postgresql://...`) of a store location that is a PostgreSQL URL, with any
    SQLAlchemy driver suffix dropped (`postgresql+psycopg://`); None for a SQLite path."""
    scheme, sep, rest = value.partition("://")
    if not sep or scheme.lower().split("+", 1)[0] not in _SCHEMES:
        return None
    return f"postgresql://{rest}"
