"""Fixtures: real tstore node processes started through TStoreCluster.

The tests need a tstore executable: $TSTORE_BIN, or `tstore` on PATH
(`.ci/run` sets TSTORE_BIN to the one cargo built).
"""

import os
import shutil
import socket

import pytest

from tstore import TStoreCluster


def free_ports(n):
    """`n` consecutive UDP ports on 127.0.0.1 that nothing holds now."""
    for base in range(20000 + (os.getpid() % 200) * 50, 60000, 10):
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return [f"127.0.0.1:{p}" for p in range(base, base + n)]
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free ports")


@pytest.fixture(scope="session", autouse=True)
def tstore_bin():
    path = os.environ.get("TSTORE_BIN") or shutil.which("tstore")
    if not path:
        pytest.fail("set TSTORE_BIN to a tstore executable (cargo build --bin tstore)")
    os.environ["TSTORE_BIN"] = path
    return path


def start_cluster(n):
    cluster = TStoreCluster(seeds=free_ports(n))
    cluster.start(timeout=90)
    return cluster


@pytest.fixture(scope="module")
def cluster():
    """A 3-node cluster for a test module."""
    c = start_cluster(3)
    yield c
    c.stop()
