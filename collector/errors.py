"""Typed failures. Each carries a short `reason` that becomes a metric label value."""


class SourceError(Exception):
    """A source could not be sampled; the sample is dropped whole and nothing advances."""

    reason = "error"

    def __init__(self, source: str, message: str) -> None:
        self.source = source
        super().__init__(f"source {source}: {message}")


class SourceTimeout(SourceError):
    reason = "timeout"


class SourceUnreachable(SourceError):
    reason = "connection"


class SourceQueryFailed(SourceError):
    reason = "query"


class SourceRefused(SourceError):
    """The database refused the read-only session or the access (permissions, read-only violation)."""

    reason = "permission"


class StateFailed(SourceError):
    """fabwatch's own state file could not take the sample (read-only, locked, full): the source
    itself answered, but nothing advances until the state can be saved."""

    reason = "state"


class CannotListen(OSError):
    """A port of the service could not be bound; `strerror` names the address and the cause."""
