"""Opening a source's record store: a SQLite file (`store.RecordStore`) or a PostgreSQL URL
(`pgstore.PostgresRecordStore`). Kept apart from both so that each imports only the shared
vocabulary of `store` and the two never import each other."""

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from collector.sources.store import Records, RecordStore
from collector.storeurl import postgres_url


def open_records(location: str | Path, source: str, tables: Iterable[str], *, synchronous: str = "NORMAL",
                 final_statuses: Mapping[str, Sequence[str]] | None = None, shared: bool = False) -> Records:
    """Open the record store of `source` at `location`: a SQLite file, or a PostgreSQL URL (the
    source's own schema there, `pgstore.schema_of`; `synchronous` and `shared` are SQLite's alone:
    the PostgreSQL store keeps nothing between transactions that another writer could make stale)."""
    url = postgres_url(str(location))
    if url is None:
        return RecordStore(location, tables, synchronous=synchronous, final_statuses=final_statuses, shared=shared)
    from collector.sources.pgstore import PostgresRecordStore, schema_of  # psycopg only when asked for

    return PostgresRecordStore(url, schema_of(source), tables, final_statuses=final_statuses)
