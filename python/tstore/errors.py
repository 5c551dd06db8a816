"""The exceptions of the tstore package.

Every failure is a :class:`TStoreError`. The subclasses are the kinds the
``tstore`` CLI reports as exit codes (README, "Exit codes"), so a program
can act on the cause the same way a shell script does on the code:

========================  ====  ==============================================
exception                 code  meaning
========================  ====  ==============================================
``InvalidRow``            3     not JSON-serialisable, not an object, a
                                malformed batch or one across shards
``InvalidRequest``        3     a malformed table definition or admin request
``ConflictError``         4     duplicate insert, stale ``if_version``, update
                                of a missing row, an existing table
``UnavailableError``      5     the shard or control plane cannot take it now
``UnknownOutcome``        6     sent, but its outcome is unknown: read first
``RowTooLarge``           7     the row exceeds 64 KiB
``BadKey``                8     the key column is missing or not int/str
``NoSuchTable``           9     the table (or node) does not exist
``TStoreConnectionError`` 1     no node could be reached
========================  ====  ==============================================

Except for ``UnknownOutcome``, a failed write wrote nothing.
"""

from __future__ import annotations

import re
from typing import Optional

__all__ = [
    "TStoreError",
    "InvalidRequest",
    "InvalidRow",
    "ConflictError",
    "UnavailableError",
    "UnknownOutcome",
    "RowTooLarge",
    "BadKey",
    "NoSuchTable",
    "TStoreConnectionError",
]


class TStoreError(Exception):
    """Any failure of a tstore call. ``exit_code`` is the CLI's code for it."""

    exit_code: int = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(TStoreError):
    """The request itself is wrong; nothing was written. Do not retry as is."""

    exit_code = 3


class InvalidRow(InvalidRequest):
    """A row, patch or batch that is not valid: nothing was written."""


class ConflictError(TStoreError):
    """A condition did not hold (the key exists, the row is at another
    version or missing, the table exists): nothing was written.

    ``current_version`` is the row's version when the node named it (a
    duplicate insert, a stale ``if_version``), else None.
    """

    exit_code = 4

    def __init__(self, message: str, current_version: Optional[int] = None) -> None:
        super().__init__(message)
        self.current_version = current_version


class UnavailableError(TStoreError):
    """The shard (or the control plane) cannot take the request now, after
    the client retried for 10 s: nothing was written; retry later."""

    exit_code = 5


class UnknownOutcome(TStoreError):
    """The write was sent but its outcome is unknown (its primary failed
    while it was in flight): read the row before sending it again."""

    exit_code = 6


class RowTooLarge(TStoreError):
    """The row (or the row an update makes) exceeds 64 KiB: nothing written."""

    exit_code = 7


class BadKey(TStoreError):
    """The key column is missing, or not an integer or a string."""

    exit_code = 8


class NoSuchTable(TStoreError):
    """The table (for operations on nodes: the node) does not exist."""

    exit_code = 9


class TStoreConnectionError(TStoreError):
    """No node could be reached, or the client certificate is missing."""

    exit_code = 1


_VERSION = re.compile(r"(?:current version is|already exists \(version) (\d+)")

_KINDS = {
    "invalid": InvalidRow,
    "admin_invalid": InvalidRequest,
    "conflict": ConflictError,
    "admin_conflict": ConflictError,
    "unavailable": UnavailableError,
    "unknown": UnknownOutcome,
    "too_large": RowTooLarge,
    "bad_key": BadKey,
    "no_table": NoSuchTable,
    "not_found": NoSuchTable,
    "connection": TStoreConnectionError,
    "certificate": TStoreConnectionError,
}


def from_native(kind: str, message: str) -> TStoreError:
    """The exception for a failure the native client reported as ``kind``."""
    cls = _KINDS.get(kind, TStoreError)
    if cls is ConflictError:
        m = _VERSION.search(message)
        return ConflictError(message, int(m.group(1)) if m else None)
    return cls(message)
