"""Names several generators must agree on: dashboard uids that alerts link to."""

import hashlib

OVERVIEW_UID = "fabwatch-overview"
MANAGEMENT_UID = "fabwatch-management"
SELF_UID = "fabwatch-self"
_PROCESS_PREFIX = "fabwatch-process-"
_MAX_UID = 40
"""Grafana refuses uids longer than 40 characters."""


def process_uid(process: str) -> str:
    """Return the stable uid of a process dashboard (hashed when the name would exceed 40 chars)."""
    uid = _PROCESS_PREFIX + process.replace("_", "-")
    if len(uid) <= _MAX_UID:
        return uid
    digest = hashlib.sha1(process.encode()).hexdigest()[:8]
    return f"{uid[:_MAX_UID - 9]}-{digest}"
