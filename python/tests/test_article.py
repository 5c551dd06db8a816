"""The article's program, unchanged (examples/article.py), end to end."""

import os
import runpy

import pytest

from tstore import _local

ARTICLE = os.path.join(os.path.dirname(__file__), "..", "examples", "article.py")


def test_article_program_then_every_row_read_back():
    if _local.is_listening("127.0.0.1:8001") or _local.is_listening("127.0.0.1:8002"):
        pytest.skip("ports 8001/8002 are taken on this machine")
    g = runpy.run_path(ARTICLE, run_name="article")
    cluster, table, sharded = g["cluster"], g["table"], g["sharded_table"]
    try:
        rows = {r["id"]: dict(r) for r in sharded.scan()}
        assert rows == {
            1: {"id": 1, "name": "Alice", "age": 25},
            2: {"id": 2, "name": "Bob", "age": 30},
            3: {"id": 3, "name": "Charlie", "age": 35},
        }
        for key, row in rows.items():
            got = sharded.get(key)
            assert dict(got) == row and got.version > 0
            assert dict(sharded.get(key, consistency="session")) == row
        n8001 = cluster.node_id("127.0.0.1:8001")
        n8002 = cluster.node_id("127.0.0.1:8002")
        # replicate: every primary on 8001, every backup on 8002.
        info = table.describe()
        assert info.shards
        for s in info.shards:
            assert s.primary == n8001 and s.backups == [n8002], s
        assert info.placement == {"primaries": [n8001], "backups": [n8002]}
        # shard_key: hash-sharded by id, every copy on the two nodes.
        info = cluster.describe("sharded_user")
        assert info.key == "id" and info.sharding == "hash"
        assert info.placement == {"primaries": [n8001, n8002], "backups": [n8001, n8002]}
        for s in info.shards:
            assert {s.primary, *s.backups} <= {n8001, n8002}
    finally:
        cluster.stop()
    assert cluster.processes == {}
