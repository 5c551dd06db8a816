"""``Table.replicate`` and ``Table.shard_key``: a placement rule in the
cluster map, and a wait until the coordinator has moved the copies there.

The rule lives in the map (``tstore admin placement``, the README's
"Placement rules"): the coordinator keeps every copy of the table on the
named nodes, the primaries on ``primaries`` when one of them holds a
copy, through failover, re-copying and rebalancing.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, List

from .errors import UnavailableError

if TYPE_CHECKING:
    from . import TableInfo, TStoreCluster


def conforms(info: "TableInfo", primaries: List[str], backups: List[str]) -> bool:
    """Whether every shard is at full strength with its copies where the rule says."""
    allowed = set(primaries) | set(backups)
    for s in info.shards:
        members = [s.primary, *s.backups]
        if s.learners or len(members) != info.replicas:
            return False
        if s.primary not in primaries or any(m not in allowed for m in members):
            return False
    return True


def place(cluster: "TStoreCluster", table: str, primaries: List[str], backups: List[str], timeout: float) -> "TableInfo":
    from . import _call

    p = [cluster.node_id(n) for n in primaries]
    b = [cluster.node_id(n) for n in backups]
    _call(cluster._conn().set_placement, table, p, b)
    deadline = time.monotonic() + timeout
    info = cluster.describe(table)
    while not conforms(info, p, b):
        if time.monotonic() > deadline:
            raise UnavailableError(
                f"table {table!r} did not reach its placement (primaries {', '.join(p)}; "
                f"backups {', '.join(b)}) within {timeout:.0f}s; the rule is set and the "
                f"coordinator keeps working on it (see cluster.events())"
            )
        time.sleep(0.2)
        info = cluster.describe(table)
    return info
