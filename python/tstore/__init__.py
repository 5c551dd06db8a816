"""tstore for Python: tables over a tstore cluster, through tstore's Rust client.

>>> from tstore import TStoreCluster
>>> cluster = TStoreCluster()
>>> cluster.add_node("127.0.0.1:8001")
>>> cluster.add_node("127.0.0.1:8002")
>>> cluster.start()                      # connects, or starts local nodes
>>> users = cluster.create_table("user")
>>> users.insert({"id": 1, "name": "Alice", "age": 25})
>>> users.get(1)
{'id': 1, 'name': 'Alice', 'age': 25}

Rows are dicts, serialised as JSON; each row holds its table's key column
(an int or a str). Every call goes through the native module
``tstore._native`` (the Rust routing and admin clients, with their own
tokio runtime): a row goes straight to the node serving its shard, writes
are resent safely through a failover, and the GIL is released while a call
waits, so one :class:`TStoreCluster` serves many threads at once.

Failures are :class:`TStoreError` subclasses, one per kind of the CLI's
exit codes (see :mod:`tstore.errors`).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, TypeVar, Union

from . import _local
from ._native import Native as _Native
from ._native import NativeError as _NativeError
from .errors import (
    BadKey,
    ConflictError,
    InvalidRequest,
    InvalidRow,
    NoSuchTable,
    RowTooLarge,
    TStoreConnectionError,
    TStoreError,
    UnavailableError,
    UnknownOutcome,
    from_native,
)

__all__ = [
    "TStoreCluster",
    "Table",
    "Row",
    "Member",
    "ShardInfo",
    "TableInfo",
    "Event",
    "ImportReport",
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

Key = Union[int, str]
T = TypeVar("T")

#: The largest page a scan asks for (the nodes' limit per request).
MAX_PAGE = 10_000
#: How long ``start()`` waits for the cluster by default.
START_TIMEOUT = 60.0
_MAX_INT_KEY = 2**63 - 1


def _call(f: Callable[..., T], *args: Any) -> T:
    """Runs a native call, raising its failure as the matching TStoreError."""
    try:
        return f(*args)
    except _NativeError as e:
        kind, message = e.args
        raise from_native(kind, message) from None


def _row_json(row: Any, what: str = "a row") -> str:
    if not isinstance(row, dict):
        raise InvalidRow(f"{what} must be a dict (a JSON object), not {type(row).__name__}")
    try:
        return json.dumps(row, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as e:
        raise InvalidRow(f"{what} is not JSON-serialisable: {e}") from None


def _check_key(key: Any) -> Key:
    if isinstance(key, bool) or not isinstance(key, (int, str)):
        raise BadKey(f"a key is an integer or a string, not {type(key).__name__}")
    if isinstance(key, int) and not -(2**63) <= key <= _MAX_INT_KEY:
        raise BadKey(f"key {key} does not fit in 64 bits")
    return key


def _after(key: Key) -> Key:
    """The smallest key greater than ``key`` (integers sort before strings)."""
    if isinstance(key, int):
        return key + 1 if key < _MAX_INT_KEY else ""
    return key + "\0"


class Row(dict):
    """A row: a dict of its columns, with ``version`` (the log position
    that wrote it: it grows with every write of the row)."""

    version: int

    def __init__(self, columns: Dict[str, Any], version: int) -> None:
        super().__init__(columns)
        self.version = version

    def __repr__(self) -> str:
        return f"Row({dict.__repr__(self)}, version={self.version})"


@dataclass(frozen=True)
class Member:
    """A node as the contacted node sees it in gossip."""

    node_id: str
    status: str
    """``live``, ``down``, ``left`` or ``joining``."""
    generation: int
    addr: str
    zone: str
    roles: List[str]
    version: str
    heartbeat: int
    storage_error: Optional[str] = None


@dataclass(frozen=True)
class ShardInfo:
    """One shard: its keys, and who holds it at which configuration epoch."""

    index: int
    name: str
    keys: str
    primary: str
    backups: List[str]
    learners: List[str]
    epoch: int
    away: List[str] = field(default_factory=list)


@dataclass(frozen=True)
class TableInfo:
    """A table as committed in the cluster map."""

    name: str
    id: int
    key: str
    sharding: str
    """``hash`` or ``range``."""
    replicas: int
    min_copies: int
    shards: List[ShardInfo]
    range_splits: Optional[List[Key]]
    map_version: int
    placement: Optional[Dict[str, List[str]]] = None
    """The table's placement rule, ``{"primaries": [...], "backups": [...]}``
    (node ids), or None: see :meth:`Table.replicate`."""


@dataclass(frozen=True)
class Event:
    """A decision of the coordinator (failover, re-copy, rebalance, ...)."""

    version: int
    at_unix_ms: int
    subject: str
    what: str
    why: str
    epoch: Optional[int]


@dataclass
class ImportReport:
    """What ``Table.import_rows`` did: rows written and, per failed row, its
    index in the input and the exception."""

    written: int = 0
    failed: List[Tuple[int, TStoreError]] = field(default_factory=list)


def _table_info(doc: Dict[str, Any]) -> TableInfo:
    t = doc["table"]
    return TableInfo(
        name=t["name"],
        id=t["id"],
        key=t["key"],
        sharding=t["sharding"]["kind"],
        replicas=t["replicas"],
        min_copies=t["min_copies"],
        shards=[ShardInfo(**s) for s in t["shards"]],
        range_splits=t["range_splits"],
        map_version=doc["map_version"],
        placement=t.get("placement"),
    )


class Table:
    """A table of a :class:`TStoreCluster`. Rows are dicts holding the key
    column; every method may be called from several threads at once."""

    def __init__(self, cluster: "TStoreCluster", name: str, key: str = "id") -> None:
        self.cluster = cluster
        self.name = name
        self.key = key

    def __repr__(self) -> str:
        return f"Table({self.name!r}, key={self.key!r})"

    @property
    def _native(self) -> _Native:
        return self.cluster._conn()

    # ----- rows -----

    def insert(self, row: Dict[str, Any]) -> int:
        """Creates a row; returns its version. Raises :class:`ConflictError`
        (with ``current_version``) if its key exists."""
        return _call(self._native.insert, self.name, _row_json(row))

    def put(self, row: Dict[str, Any]) -> int:
        """Creates or replaces a row; returns its new version."""
        return _call(self._native.put, self.name, _row_json(row))

    def get(self, key: Key, consistency: str = "strong") -> Optional[Row]:
        """The row with this key, or None.

        ``consistency``: ``strong`` (the shard's primary under its lease:
        sees every acknowledged write), ``replica`` (any in-sync copy; may
        lag by about 100 ms) or ``session`` (a copy that has every write and
        read of this cluster object, else the primary).
        """
        found = _call(self._native.get, self.name, _check_key(key), consistency)
        if found is None:
            return None
        text, version = found
        return Row(json.loads(text), version)

    def update(self, key: Key, patch: Dict[str, Any], if_version: Optional[int] = None) -> int:
        """Merges ``patch``'s columns into the row; with ``if_version``, only
        if the row is still at that version (else :class:`ConflictError`
        with the current version). Returns the new version."""
        return _call(self._native.update, self.name, _check_key(key), _row_json(patch, "a patch"), if_version)

    def delete(self, key: Key, if_version: Optional[int] = None) -> None:
        """Deletes the row; with ``if_version``, only at that version."""
        _call(self._native.delete, self.name, _check_key(key), if_version)

    def scan(
        self,
        start: Optional[Key] = None,
        end: Optional[Key] = None,
        limit: Optional[int] = None,
        consistency: str = "strong",
        page_size: int = 1000,
    ) -> Iterator[Row]:
        """Rows with ``start <= key < end`` in key order (integers before
        strings), at most ``limit`` (None: all). Pages through the table
        ``page_size`` rows at a time (each page asks every shard that can
        hold such keys at once), so it serves any number of rows; each row
        is read when its page is, not all at once."""
        if start is not None:
            start = _check_key(start)
        if end is not None:
            end = _check_key(end)
        if limit is not None and limit < 0:
            raise InvalidRequest(f"limit {limit}: must be 0 or more")
        page_size = max(1, min(page_size, MAX_PAGE))
        left = limit
        while left is None or left > 0:
            want = page_size if left is None else min(page_size, left)
            page = _call(self._native.scan, self.name, start, end, want, consistency)
            for key, text, version in page:
                yield Row(json.loads(text), version)
            if left is not None:
                left -= len(page)
            if len(page) < want:
                return
            start = _after(page[-1][0])
            if end is not None and not _before(start, end):
                return

    def batch(self, ops: Sequence[Dict[str, Any]]) -> List[Optional[int]]:
        """Several writes, all or nothing, whose keys are all in one shard.

        ``ops`` is a list of ``{"put": row}``, ``{"insert": row}``,
        ``{"update": {"key": k, "patch": {...}, "if_version": v}}`` and
        ``{"delete": {"key": k, "if_version": v}}`` (``if_version``
        optional). Returns each write's new version (None for a delete).
        """
        if not isinstance(ops, (list, tuple)):
            raise InvalidRow("a batch is a list of operations")
        try:
            text = json.dumps(list(ops), allow_nan=False)
        except (TypeError, ValueError) as e:
            raise InvalidRow(f"the batch is not JSON-serialisable: {e}") from None
        return _call(self._native.batch, self.name, text)

    def import_rows(
        self,
        rows: Iterable[Dict[str, Any]],
        progress: bool = False,
        concurrency: int = 64,
        chunk: int = 2000,
        insert: bool = False,
    ) -> ImportReport:
        """Writes every row of ``rows`` (put, or insert with ``insert=True``),
        ``concurrency`` at a time. A bad row does not stop the others: the
        report lists each failure by its index. With ``progress``, shows a
        progress bar (tqdm when installed, else a line on stderr)."""
        report = ImportReport()
        bar = _Progress(progress)
        base = 0
        try:
            for batch in _chunks(rows, chunk):
                texts: List[str] = []
                index: List[int] = []
                for i, row in enumerate(batch):
                    try:
                        texts.append(_row_json(row))
                        index.append(base + i)
                    except TStoreError as e:
                        report.failed.append((base + i, e))
                failures = _call(self._native.write_many, self.name, texts, concurrency, insert)
                for i, kind, message in failures:
                    report.failed.append((index[i], from_native(kind, message)))
                report.written += len(texts) - len(failures)
                base += len(batch)
                bar.update(base, len(report.failed))
        finally:
            bar.close()
        report.failed.sort(key=lambda f: f[0])
        return report

    # ----- placement -----

    def describe(self) -> TableInfo:
        """The table's shards and where they are (as ``cluster.describe``)."""
        return self.cluster.describe(self.name)

    def replicate(self, primaries: Sequence[str], backups: Sequence[str], timeout: float = 60.0) -> TableInfo:
        """Keeps the table's copies on the named nodes (ids or addresses):
        each shard's primary on one of ``primaries``, its backups on
        ``backups`` (then on the other ``primaries``). Sets a placement rule
        in the cluster map and waits until the coordinator has moved the
        copies there; returns the table.

        The coordinator keeps the rule through failover, re-copying and
        rebalancing. When a named node dies, its shards run short (with
        fewer copies) rather than move to a node outside the rule; when
        the primary's node dies, a backup is promoted even if it is not a
        named primary (the shard stays writable), and the primary goes back
        to a named primary once one holds a copy again.
        """
        from ._placement import place

        return place(self.cluster, self.name, list(primaries), list(backups), timeout)

    def shard_key(self, column: str, *nodes: str, timeout: float = 60.0) -> TableInfo:
        """Hash-shards the table by ``column`` over ``nodes`` (ids or
        addresses): every copy of every shard on those nodes, primaries
        spread over them. The table's key column is fixed when it is
        created: ``column`` must be it, unless the table is empty, in which
        case it is created again with that key column (same shards and
        replicas). Sets the placement rule (every node both a primary and a
        backup node) and waits until the copies are there; see
        :meth:`replicate` for how the rule meets a node's death."""
        from ._placement import place

        if column != self.key:
            info = self.describe()
            if next(iter(self.scan(limit=1)), None) is not None:
                raise InvalidRequest(
                    f"table {self.name!r} is keyed by {self.key!r} and holds rows: "
                    f"create it with key={column!r} to shard it by {column!r}"
                )
            self.cluster.drop_table(self.name)
            self.cluster.create_table(self.name, key=column, shards=len(info.shards), replicas=info.replicas)
            self.key = column
        if not nodes:
            return self.describe()
        return place(self.cluster, self.name, list(nodes), list(nodes), timeout)


def _before(a: Key, b: Key) -> bool:
    """``a < b`` in key order: integers before strings."""
    if isinstance(a, int) != isinstance(b, int):
        return isinstance(a, int)
    return a < b  # type: ignore[operator]


def _chunks(rows: Iterable[T], n: int) -> Iterator[List[T]]:
    batch: List[T] = []
    for r in rows:
        batch.append(r)
        if len(batch) >= n:
            yield batch
            batch = []
    if batch:
        yield batch


class _Progress:
    def __init__(self, on: bool) -> None:
        self.on = on
        self.bar = None
        if on:
            try:
                from tqdm import tqdm  # type: ignore[import-not-found]

                self.bar = tqdm(unit="rows")
            except ImportError:
                self.bar = None
        self.done = 0

    def update(self, done: int, failed: int) -> None:
        if not self.on:
            return
        if self.bar is not None:
            self.bar.update(done - self.done)
            self.bar.set_postfix(failed=failed)
        else:
            sys.stderr.write(f"\rimported {done} rows ({failed} failed)")
            sys.stderr.flush()
        self.done = done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.on:
            sys.stderr.write("\n")


class TStoreCluster:
    """A tstore cluster: the nodes it is made of, and a connection to them.

    ``seeds``: node addresses (``host:port``); more can be named with
    :meth:`add_node`. ``certs``: a ``tstore cert`` directory holding the
    client certificate ``client-<client_name>``; None when ``start()`` is
    to start the nodes itself (it then makes a CA and certificates in a
    directory it creates). ``tstore_bin``: the ``tstore`` executable for
    local nodes (default: ``$TSTORE_BIN``, then ``tstore`` on PATH).
    ``workdir``: where local nodes keep their data and logs (default: a
    temporary directory, removed by :meth:`stop`).

    Use it as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        seeds: Optional[Sequence[str]] = None,
        certs: Optional[str] = None,
        client_name: str = "admin",
        tstore_bin: Optional[str] = None,
        workdir: Optional[str] = None,
    ) -> None:
        self.addrs: List[str] = []
        for s in seeds or []:
            self.add_node(s)
        self.certs = certs
        self.client_name = client_name
        self.tstore_bin = tstore_bin
        self.workdir = workdir
        self._own_workdir = False
        self._native: Optional[_Native] = None
        self._local: Optional[_local.LocalNodes] = None
        self._finalizer: Optional[weakref.finalize] = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        state = "connected" if self._native is not None else "not started"
        return f"TStoreCluster({self.addrs!r}, {state})"

    def add_node(self, addr: str) -> None:
        """Names a node of the cluster by its address (``host:port``)."""
        _local.split_addr(addr)
        if addr not in self.addrs:
            self.addrs.append(addr)

    # ----- lifecycle -----

    def start(self, timeout: float = START_TIMEOUT) -> "TStoreCluster":
        """Connects to the named nodes. An address on this machine where no
        node runs gets a local ``tstore start`` process first. Waits until
        every named node is live and the control plane has a leader."""
        with self._lock:
            if self._native is not None:
                return self
            if not self.addrs:
                raise TStoreError("no node named: call add_node(addr) or pass seeds= first")
            to_start = [a for a in self.addrs if _local.is_local(a) and not _local.is_listening(a)]
            running = [a for a in self.addrs if a not in to_start]
            try:
                if to_start:
                    self._start_local(to_start, running)
                self._connect_and_wait(timeout)
            except BaseException:
                self._stop_local()
                raise
            return self

    def _start_local(self, to_start: List[str], running: List[str]) -> None:
        binary = _local.find_binary(self.tstore_bin)
        if self.workdir is None:
            self.workdir = tempfile.mkdtemp(prefix="tstore-")
            self._own_workdir = True
        if self.certs is None:
            if running:
                raise TStoreError(
                    f"nodes run at {', '.join(running)}: pass certs= (their tstore cert directory) "
                    f"to start {', '.join(to_start)} beside them"
                )
            self.certs = f"{self.workdir}/certs"
        ids: List[str] = []
        for a in to_start:
            ids.append(_local.node_id_for(a, ids))
        nodes = _local.LocalNodes(binary, self.workdir, self.certs)
        self._local = nodes
        # The nodes would outlive a program that forgets stop(): they are
        # stopped when this object is collected, or at exit.
        self._finalizer = weakref.finalize(self, _cleanup, nodes, self.workdir if self._own_workdir else None)
        nodes.ensure_certs(ids, self.client_name)
        # As `tstore demo`: with no node running, the first (up to) three
        # form the control plane together; the others (and any node added
        # to a running cluster) join it.
        voters = 0 if running else min(3, len(to_start))
        for i, (a, nid) in enumerate(zip(to_start, ids)):
            seeds = [s for s in self.addrs if s != a]
            nodes.start(a, nid, seeds, voters if i < voters else 0)

    def _connect_and_wait(self, timeout: float) -> None:
        if self.certs is None:
            raise TStoreError("certs= is needed to connect to running nodes (a tstore cert directory)")
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        native = None
        while time.monotonic() < deadline:
            if self._local is not None:
                msg = self._local.exited()
                if msg:
                    raise TStoreError(msg)
            try:
                if native is None:
                    native = _call(_Native, list(self.addrs), self.certs, self.client_name)
                members = json.loads(_call(native.members))["members"]
                live = {m["addr"] for m in members if m["status"] == "Live"}
                leader = json.loads(_call(native.cluster)).get("leader")
                missing = [a for a in self.addrs if a not in live]
                if not missing and leader and self._registered(native):
                    self._native = native
                    return
                last = f"not live yet: {', '.join(missing) or '-'}; control plane {'formed' if leader else 'not formed yet'}"
            except TStoreConnectionError as e:
                last = str(e)
                native = None
            except TStoreError as e:
                last = str(e)
            time.sleep(0.2)
        raise UnavailableError(f"the cluster did not come up within {timeout:.0f}s: {last}")

    def _registered(self, native: _Native) -> bool:
        """Whether every node this object started is in the cluster map
        (only then does it receive copies). Marking a node active is
        refused for an unregistered node, and changes nothing for a
        registered one that is new."""
        if self._local is None:
            return True
        for nid in self._local.ids.values():
            try:
                _call(native.set_node_state, nid, "active")
            except (NoSuchTable, UnavailableError):
                return False
        return True

    def stop(self) -> None:
        """Closes the connection and stops the nodes ``start()`` started
        (SIGTERM: each leaves politely). Nodes it did not start keep running."""
        with self._lock:
            if self._native is not None:
                self._native.close()
                self._native = None
            self._stop_local()

    def _stop_local(self) -> None:
        if self._finalizer is not None:
            self._finalizer()
            self._finalizer = None
        elif self._local is not None:
            self._local.stop()
        self._local = None
        if self._own_workdir:
            self.workdir = None
            self.certs = None
            self._own_workdir = False

    def __enter__(self) -> "TStoreCluster":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _conn(self) -> _Native:
        native = self._native
        if native is None:
            raise TStoreError("the cluster is not started: call start() first")
        return native

    # ----- local processes -----

    @property
    def processes(self) -> Dict[str, int]:
        """The pids of the nodes this object started, by address."""
        if self._local is None:
            return {}
        return {a: p.pid for a, p in self._local.procs.items() if p.poll() is None}

    def node_id(self, node: str) -> str:
        """A node's id, given its id or its address."""
        if ":" not in node:
            return node
        for m in self.members():
            if m.addr == node:
                return m.node_id
        if self._local is not None and node in self._local.ids:
            return self._local.ids[node]
        raise NoSuchTable(f"no node has the address {node}")

    def kill(self, node: str, sig: int = 9) -> None:
        """Sends ``sig`` (default SIGKILL) to a node this object started (by address or id)."""
        self._local_nodes().kill(self._local_addr(node), sig)

    def restart(self, node: str) -> None:
        """Starts again, with its data, a node this object started and that exited."""
        self._local_nodes().restart(self._local_addr(node))

    def _local_nodes(self) -> _local.LocalNodes:
        if self._local is None:
            raise TStoreError("this cluster object started no nodes")
        return self._local

    def _local_addr(self, node: str) -> str:
        nodes = self._local_nodes()
        if node in nodes.procs:
            return node
        for a, nid in nodes.ids.items():
            if nid == node:
                return a
        raise NoSuchTable(f"no node {node!r} was started by this cluster object")

    # ----- tables -----

    def create_table(
        self,
        name: str,
        key: str = "id",
        shards: Optional[int] = None,
        range_splits: Optional[Sequence[Key]] = None,
        replicas: Optional[int] = None,
        min_copies: int = 0,
    ) -> Table:
        """Creates a table and returns it.

        ``shards``: hash-shard into this many (default 8); or
        ``range_splits``: split points (ints or strs, increasing) of a
        range-sharded table. ``replicas``: copies of each shard (default 3,
        or fewer when fewer nodes are live). ``min_copies``: copies that
        must hold a write before it is acknowledged (0: ``min(2, replicas)``).
        """
        if replicas is None:
            live = sum(1 for m in self.members() if m.status == "live")
            replicas = max(1, min(3, live))
        splits = [_check_key(k) for k in range_splits] if range_splits is not None else None
        native = self._conn()
        doc = json.loads(_call(native.create_table, name, key, shards, splits, replicas, min_copies))
        # The node that answered may route the table a moment after it
        # confirmed it: wait until the row path knows it.
        deadline = time.monotonic() + 10
        while True:
            try:
                _call(native.get, name, 0, "replica")
                break
            except NoSuchTable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
            except TStoreError:
                break
        return Table(self, name, doc["table"]["key"])

    def table(self, name: str) -> Table:
        """An existing table (raises :class:`NoSuchTable` if there is none)."""
        return Table(self, name, self.describe(name).key)

    def drop_table(self, name: str) -> int:
        """Drops a table; returns the map version without it."""
        return _call(self._conn().drop_table, name)

    def tables(self) -> List[TableInfo]:
        """Every table."""
        doc = json.loads(_call(self._conn().tables))
        return [_table_info({"map_version": doc["map_version"], "table": t}) for t in doc["tables"]]

    def describe(self, table: str) -> TableInfo:
        """A table's shards: key range, primary, backups, learners, epoch."""
        return _table_info(json.loads(_call(self._conn().describe, table)))

    def copies(self, table: str, checksums: bool = False) -> List[Dict[str, Any]]:
        """Every copy of every shard of ``table`` as its node reports it
        (role, epoch, applied position, log), with ``checksums`` a checksum
        of its rows."""
        return json.loads(_call(self._conn().copies, table, checksums))

    # ----- operations -----

    def members(self) -> List[Member]:
        """Every node with its status (``live``, ``down``, ``left``, ``joining``)."""
        doc = json.loads(_call(self._conn().members))
        return [Member(**{**m, "status": m["status"].lower()}) for m in doc["members"]]

    def gossip(self) -> Dict[str, Any]:
        """The raw gossip state of the contacted node: per node incarnation,
        its heartbeat, status and keys."""
        return _lower_status(json.loads(_call(self._conn().gossip)))

    def watch_gossip(self, timeout: Optional[float] = None) -> Iterator[Dict[str, Any]]:
        """The gossip state (``{"snapshot": ...}``), then each change as it
        happens (``{"at_unix_ms": ..., "changes": [...]}``). Ends when the
        node ends the watch, or when nothing came for ``timeout`` seconds."""
        watch = _call(self._conn().watch_gossip)
        while True:
            item = _call(watch.next, timeout)
            if item is None:
                return
            yield _lower_status(json.loads(item))

    def cluster_status(self) -> Dict[str, Any]:
        """The control plane: Raft role, leader, term, voters, map version."""
        return json.loads(_call(self._conn().cluster))

    def events(self) -> List[Event]:
        """The coordinator's decisions, oldest first."""
        doc = json.loads(_call(self._conn().events))
        return [Event(**e) for e in doc["events"]]

    def drain(self, node: str, wait: bool = True, timeout: float = 120.0) -> Dict[str, Any]:
        """Moves every copy off a node (id or address). With ``wait``,
        returns once it holds none (it is then safe to stop)."""
        nid = self.node_id(node)
        version = _call(self._conn().set_node_state, nid, "draining")
        deadline = time.monotonic() + timeout
        holds = self._copies_on(nid)
        while wait and holds and time.monotonic() < deadline:
            time.sleep(0.25)
            holds = self._copies_on(nid)
        if wait and holds:
            raise UnavailableError(f"{nid} still holds {len(holds)} copies after {timeout:.0f}s: {', '.join(holds[:8])}")
        return {"node": nid, "map_version": version, "copies_left": holds, "safe_to_stop": not holds}

    def undrain(self, node: str) -> int:
        """Lets a drained node take copies again; returns the map version."""
        return _call(self._conn().set_node_state, self.node_id(node), "active")

    def _copies_on(self, nid: str) -> List[str]:
        return [
            s.name
            for t in self.tables()
            for s in t.shards
            if nid == s.primary or nid in s.backups or nid in s.learners
        ]

    def promote(self, table: str, shard: int, node: str) -> int:
        """Makes the backup ``node`` the shard's primary (a clean handover)."""
        return _call(self._conn().shard_op, table, shard, "promote", self.node_id(node), None)

    def move_shard(self, table: str, shard: int, from_node: str, to_node: str) -> int:
        """Moves a backup's copy to a node holding none (a learner first)."""
        return _call(
            self._conn().shard_op, table, shard, "move", self.node_id(from_node), self.node_id(to_node)
        )


def _cleanup(nodes: Optional[_local.LocalNodes], workdir: Optional[str]) -> None:
    if nodes is not None:
        nodes.stop()
    if workdir is not None:
        shutil.rmtree(workdir, ignore_errors=True)


def _lower_status(doc: Any) -> Any:
    """The gossip documents with node statuses in lower case, as ``members``."""
    if isinstance(doc, dict):
        return {k: (v.lower() if k in ("status", "from", "to") and isinstance(v, str) else _lower_status(v)) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_lower_status(v) for v in doc]
    return doc
