"""Rows: the write and read methods, paging scans, import, batches."""

import pytest


@pytest.fixture(scope="module")
def big(cluster):
    t = cluster.create_table("scan_big", shards=5, replicas=3)
    rows = [{"id": i, "v": f"row-{i}"} for i in range(2500)]
    rows += [{"id": f"k{i:04d}", "v": i} for i in range(300)]
    report = t.import_rows(rows, progress=False, concurrency=32, chunk=700)
    assert report.written == len(rows) and report.failed == []
    return t


def test_scan_over_many_pages_returns_each_row_once_in_key_order(big):
    got = list(big.scan(page_size=333))
    keys = [r["id"] for r in got]
    want = list(range(2500)) + [f"k{i:04d}" for i in range(300)]
    assert keys == want  # integers before strings, each once
    assert all(r.version > 0 for r in got)
    assert got[7]["v"] == "row-7"


def test_scan_bounds_and_limits(big):
    assert [r["id"] for r in big.scan(start=100, end=105)] == [100, 101, 102, 103, 104]
    assert [r["id"] for r in big.scan(start=2498, limit=4, page_size=1)] == [2498, 2499, "k0000", "k0001"]
    assert len(list(big.scan(limit=1234, page_size=500))) == 1234
    assert [r["id"] for r in big.scan(start="k0298")] == ["k0298", "k0299"]
    assert list(big.scan(start=10, end=10)) == []
    assert list(big.scan(limit=0)) == []
    # Read-your-writes from any in-sync copy: every row this client wrote.
    assert len(list(big.scan(consistency="session", page_size=10_000))) == 2800


def test_write_methods_and_consistencies(cluster):
    t = cluster.create_table("rows_basic", shards=3, replicas=3)
    v1 = t.insert({"id": "alice", "age": 25})
    v2 = t.put({"id": "alice", "age": 26, "city": "Paris"})
    assert v2 > v1
    v3 = t.update("alice", {"age": 27})
    assert dict(t.get("alice")) == {"id": "alice", "age": 27, "city": "Paris"}
    assert t.get("alice").version == v3
    for c in ("strong", "session"):
        assert t.get("alice", consistency=c)["age"] == 27
    # A replica read may lag by the commit lag (about 100 ms).
    assert t.get("alice", consistency="replica")["age"] in (26, 27)
    t.delete("alice", if_version=v3)
    assert t.get("alice") is None
    assert t.get("nobody") is None


def test_batch_in_one_shard(cluster):
    t = cluster.create_table("rows_batch", range_splits=[100], replicas=3)
    versions = t.batch([
        {"put": {"id": 1, "n": 1}},
        {"insert": {"id": 2, "n": 2}},
        {"update": {"key": 1, "patch": {"n": 10}}},
        {"delete": {"key": 2}},
    ])
    assert len(versions) == 4 and versions[3] is None
    assert dict(t.get(1)) == {"id": 1, "n": 10} and t.get(2) is None
    info = t.describe()
    assert info.sharding == "range" and info.range_splits == [100] and len(info.shards) == 2


def test_import_reports_bad_rows_by_index(cluster):
    t = cluster.create_table("rows_import", shards=2, replicas=3)
    rows = [{"id": 1}, {"name": "no key"}, {"id": 2, "x": object()}, {"id": 3}]
    report = t.import_rows(iter(rows), progress=True)
    assert report.written == 2
    assert [(i, type(e).__name__) for i, e in report.failed] == [(1, "BadKey"), (2, "InvalidRow")]
    assert [r["id"] for r in t.scan()] == [1, 3]


def test_operations_as_python_objects(cluster):
    members = cluster.members()
    assert len(members) == 3 and all(m.status == "live" for m in members)
    assert sorted(m.addr for m in members) == sorted(cluster.addrs)
    g = cluster.gossip()
    assert {n["node_id"] for n in g["nodes"]} == {m.node_id for m in members}
    status = cluster.cluster_status()
    assert status["leader"] in {m.node_id for m in members}
    t = cluster.create_table("ops_events", shards=2, replicas=3)
    info = cluster.describe("ops_events")
    assert info.name == "ops_events" and info.replicas == 3 and len(info.shards) == 2
    assert all(len(s.backups) == 2 for s in info.shards)
    assert isinstance(cluster.events(), list)
    watch = cluster.watch_gossip(timeout=2)
    first = next(watch)
    assert "snapshot" in first
    watch.close()
    assert t.name in [x.name for x in cluster.tables()]
