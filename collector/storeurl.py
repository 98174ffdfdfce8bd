"""Where a store lives: a SQLite path (the embedded default) or a PostgreSQL URL (a shared store)."""

_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg", "postgresql+asyncpg", "postgresql+psycopg2")


def postgres_url(value: str) -> str | None:
    """The libpq URL of a store location that is a PostgreSQL URL (`postgresql://user@host:port/db`,
    a SQLAlchemy driver suffix dropped); None for a SQLite path."""
    scheme, sep, rest = str(value).partition("://")
    if not sep or scheme.lower() not in _SCHEMES:
        return None
    return f"postgresql://{rest}"
