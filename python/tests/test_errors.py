"""Every error kind for the matching bad input, with nothing written."""

import pytest

import tstore
from tstore import (
    BadKey,
    ConflictError,
    InvalidRequest,
    InvalidRow,
    NoSuchTable,
    RowTooLarge,
    Table,
    TStoreError,
    UnavailableError,
    UnknownOutcome,
)
from tstore.errors import from_native


@pytest.fixture(scope="module")
def users(cluster):
    return cluster.create_table("err_users", shards=4, replicas=3)


def all_rows(table):
    return [dict(r) for r in table.scan()]


def test_not_json_serialisable_is_invalid_row(users):
    before = all_rows(users)
    for bad in ({"id": 100, "x": object()}, {"id": 101, "x": {1, 2}}, {"id": 102, "x": float("nan")}):
        with pytest.raises(InvalidRow) as e:
            users.insert(bad)
        assert e.value.exit_code == 3
        with pytest.raises(InvalidRow):
            users.put(bad)
    with pytest.raises(InvalidRow):
        users.put(["not", "a", "dict"])
    with pytest.raises(InvalidRow):
        users.update(1, {"x": object()})
    assert all_rows(users) == before
    assert users.get(100) is None and users.get(101) is None


def test_missing_or_bad_key_column_is_bad_key(users):
    before = all_rows(users)
    with pytest.raises(BadKey) as e:
        users.insert({"name": "no key"})
    assert e.value.exit_code == 8
    with pytest.raises(BadKey):
        users.put({"id": 1.5, "name": "float key"})
    with pytest.raises(BadKey):
        users.put({"id": None})
    with pytest.raises(BadKey):
        users.get(1.5)
    with pytest.raises(BadKey):
        users.get(True)
    assert all_rows(users) == before


def test_duplicate_insert_is_a_conflict_with_the_current_version(users):
    v = users.insert({"id": 1, "name": "Alice", "age": 25})
    with pytest.raises(ConflictError) as e:
        users.insert({"id": 1, "name": "Mallory"})
    assert e.value.current_version == v and e.value.exit_code == 4
    row = users.get(1)
    assert dict(row) == {"id": 1, "name": "Alice", "age": 25} and row.version == v


def test_stale_if_version_is_a_conflict_with_the_current_version(users):
    v1 = users.put({"id": 2, "name": "Bob", "age": 30})
    v2 = users.update(2, {"age": 31}, if_version=v1)
    assert v2 > v1
    with pytest.raises(ConflictError) as e:
        users.update(2, {"age": 99}, if_version=v1)
    assert e.value.current_version == v2
    with pytest.raises(ConflictError) as e:
        users.delete(2, if_version=v1)
    assert e.value.current_version == v2
    row = users.get(2)
    assert dict(row) == {"id": 2, "name": "Bob", "age": 31} and row.version == v2
    # An update of a missing row is a conflict too.
    with pytest.raises(ConflictError):
        users.update(424242, {"age": 1})
    assert users.get(424242) is None


def test_unknown_table_is_no_such_table(cluster):
    ghost = Table(cluster, "no_such_table")
    for call in (
        lambda: ghost.put({"id": 1}),
        lambda: ghost.insert({"id": 1}),
        lambda: ghost.get(1),
        lambda: list(ghost.scan()),
        lambda: cluster.describe("no_such_table"),
        lambda: cluster.table("no_such_table"),
        lambda: cluster.drop_table("no_such_table"),
    ):
        with pytest.raises(NoSuchTable) as e:
            call()
        assert e.value.exit_code == 9
    assert "no_such_table" not in [t.name for t in cluster.tables()]


def test_oversized_row_is_row_too_large(users):
    before = all_rows(users)
    with pytest.raises(RowTooLarge) as e:
        users.put({"id": 3, "blob": "x" * 70_000})
    assert e.value.exit_code == 7
    users.put({"id": 4, "blob": "x" * 40_000})
    v = users.get(4).version
    with pytest.raises(RowTooLarge):
        users.update(4, {"more": "y" * 40_000})
    assert users.get(3) is None
    assert users.get(4).version == v and "more" not in users.get(4)
    assert len(all_rows(users)) == len(before) + 1


def test_batch_across_shards_or_malformed_is_invalid_and_writes_nothing(users):
    before = all_rows(users)
    with pytest.raises(InvalidRow):
        users.batch([{"put": {"id": k}} for k in range(1000, 1020)])
    with pytest.raises(InvalidRow):
        users.batch([{"frobnicate": {"id": 1}}])
    with pytest.raises(ConflictError):
        # All or nothing: the insert of an existing key fails the batch.
        users.batch([{"put": {"id": 1, "name": "Alice", "age": 26}}, {"insert": {"id": 1}}])
    assert all_rows(users) == before


def test_bad_table_definitions(cluster):
    with pytest.raises(InvalidRequest) as e:
        cluster.create_table("bad name!", shards=2, replicas=1)
    assert e.value.exit_code == 3
    with pytest.raises(InvalidRequest):
        cluster.create_table("t_both", shards=2, range_splits=[10], replicas=1)
    cluster.create_table("t_dup", shards=2, replicas=1)
    with pytest.raises(ConflictError) as e:
        cluster.create_table("t_dup", shards=2, replicas=1)
    assert e.value.exit_code == 4
    # More copies than live nodes: the control plane cannot place them now.
    with pytest.raises(UnavailableError) as e:
        cluster.create_table("t_wide", shards=2, replicas=5)
    assert e.value.exit_code == 5
    assert "t_wide" not in [t.name for t in cluster.tables()]


def test_every_kind_maps_to_its_exception_and_exit_code():
    # Kinds a healthy cluster does not produce on demand (a primary failing
    # mid-write, a session forgotten) are mapped as the CLI maps them.
    expect = {
        "invalid": (InvalidRow, 3),
        "admin_invalid": (InvalidRequest, 3),
        "conflict": (ConflictError, 4),
        "admin_conflict": (ConflictError, 4),
        "unavailable": (UnavailableError, 5),
        "unknown": (UnknownOutcome, 6),
        "too_large": (RowTooLarge, 7),
        "bad_key": (BadKey, 8),
        "no_table": (NoSuchTable, 9),
        "not_found": (NoSuchTable, 9),
        "connection": (tstore.TStoreConnectionError, 1),
        "internal": (TStoreError, 1),
    }
    for kind, (cls, code) in expect.items():
        e = from_native(kind, "message")
        assert type(e) is cls and isinstance(e, TStoreError) and e.exit_code == code, kind
    e = from_native("conflict", "condition failed on row 7: expected version 3, current version is 9")
    assert e.current_version == 9
    e = from_native("conflict", "row 7 already exists (version 12)")
    assert e.current_version == 12


def test_a_drain_that_could_never_finish_is_a_conflict(cluster, users):
    # Three nodes, three copies of every shard: nowhere to move them.
    node = cluster.members()[0].node_id
    with pytest.raises(ConflictError) as e:
        cluster.drain(node)
    assert "add a node first" in str(e.value)
    with pytest.raises(NoSuchTable):
        cluster.drain("no-such-node")
