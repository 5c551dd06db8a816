"""Local ``tstore start`` processes for :class:`tstore.TStoreCluster`.

``TStoreCluster.start()`` starts a node for each address on this machine
that nothing listens on, as ``tstore demo`` does (node/src/demo.rs): it
makes certificates with ``tstore cert`` in a directory it creates, gives
every node the others as seeds, lets the first (up to) three form the
control plane with ``--bootstrap-expect`` when no node runs yet, and runs
each node in its own process group with its log in the work directory.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import subprocess
import time
from typing import Dict, List, Optional

from .errors import TStoreError

#: How long a node may take to leave after SIGTERM before it is killed.
STOP_LIMIT = 10.0


def find_binary(explicit: Optional[str] = None) -> str:
    """The ``tstore`` executable: ``explicit``, else ``$TSTORE_BIN``, else ``tstore`` on PATH."""
    for candidate in (explicit, os.environ.get("TSTORE_BIN")):
        if candidate:
            if not (os.path.isfile(candidate) and os.access(candidate, os.X_OK)):
                raise TStoreError(f"tstore executable {candidate!r} does not exist or is not executable")
            return candidate
    found = shutil.which("tstore")
    if found:
        return found
    raise TStoreError(
        "cannot start local nodes: no tstore executable (pass tstore_bin=, set TSTORE_BIN, "
        "or put tstore on PATH; `cargo build --release --bin tstore` makes target/release/tstore)"
    )


def split_addr(addr: str) -> "tuple[str, int]":
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        raise TStoreError(f"{addr!r} is not a host:port address")
    return host.strip("[]"), int(port)


def is_local(addr: str) -> bool:
    """Whether ``addr``'s host is an address of this machine."""
    host, _ = split_addr(addr)
    if host in ("localhost", "::1") or host.startswith("127."):
        return True
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.bind((host, 0))
        return True
    except OSError:
        return False


def is_listening(addr: str) -> bool:
    """Whether some process holds the UDP port of ``addr`` (a node's QUIC port)."""
    host, port = split_addr(addr)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return True
            raise TStoreError(f"cannot check {addr}: {e}") from None
    return False


def node_id_for(addr: str, taken: List[str]) -> str:
    """A node id for a local address: ``n<port>``, unique among ``taken``."""
    _, port = split_addr(addr)
    base = f"n{port}"
    nid, i = base, 1
    while nid in taken:
        i += 1
        nid = f"{base}-{i}"
    return nid


class LocalNodes:
    """The node processes one cluster object started."""

    def __init__(self, binary: str, workdir: str, certs: str) -> None:
        self.binary = binary
        self.workdir = workdir
        self.certs = certs
        self.procs: Dict[str, subprocess.Popen] = {}
        self.ids: Dict[str, str] = {}
        self.logs: Dict[str, str] = {}
        self.args: Dict[str, List[str]] = {}

    def _cert(self, *args: str) -> None:
        r = subprocess.run([self.binary, "cert", *args, "--dir", self.certs], capture_output=True, text=True)
        if r.returncode != 0:
            raise TStoreError(f"tstore cert {' '.join(args)} failed: {r.stderr.strip()}")

    def ensure_certs(self, node_ids: List[str], client_name: str) -> None:
        """The CA, a certificate per node and the client's, made when missing."""
        if not os.path.exists(os.path.join(self.certs, "ca.crt")):
            self._cert("create-ca")
        for nid in node_ids:
            if not os.path.exists(os.path.join(self.certs, f"node-{nid}.crt")):
                self._cert("create-node", "--name", nid)
        if not os.path.exists(os.path.join(self.certs, f"client-{client_name}.crt")):
            self._cert("create-client", "--name", client_name)

    def start(self, addr: str, node_id: str, seeds: List[str], bootstrap_expect: int) -> None:
        data = os.path.join(self.workdir, node_id)
        args = [
            self.binary, "start",
            "--node-id", node_id,
            "--listen", addr,
            "--data-dir", data,
            "--certs", self.certs,
            "--bootstrap-expect", str(bootstrap_expect),
        ]
        if seeds:
            args += ["--seeds", ",".join(seeds)]
        self.ids[addr] = node_id
        self.args[addr] = args
        self._spawn(addr)

    def _spawn(self, addr: str) -> None:
        log = os.path.join(self.workdir, f"{self.ids[addr]}.log")
        self.logs[addr] = log
        with open(log, "ab") as out:
            self.procs[addr] = subprocess.Popen(
                self.args[addr], stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
            )

    def restart(self, addr: str) -> None:
        """Starts a stopped node again with its data dir (it rejoins as a new generation)."""
        p = self.procs.get(addr)
        if p is None:
            raise TStoreError(f"no node at {addr} was started by this cluster object")
        if p.poll() is None:
            raise TStoreError(f"the node at {addr} still runs (pid {p.pid})")
        # The first start's bootstrap is done; a restart only rejoins.
        args = self.args[addr]
        i = args.index("--bootstrap-expect")
        args[i + 1] = "0"
        self._spawn(addr)

    def exited(self) -> Optional[str]:
        for addr, p in self.procs.items():
            if p.poll() is not None:
                return f"node {self.ids[addr]} at {addr} exited ({p.returncode}); its log {self.logs[addr]} ends with:\n{self.tail(addr)}"
        return None

    def tail(self, addr: str, lines: int = 10) -> str:
        try:
            with open(self.logs[addr], "r", errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def kill(self, addr: str, sig: int = signal.SIGKILL) -> None:
        p = self.procs.get(addr)
        if p is None:
            raise TStoreError(f"no node at {addr} was started by this cluster object")
        if p.poll() is None:
            p.send_signal(sig)
            if sig == signal.SIGKILL:
                p.wait()

    def stop(self) -> None:
        """SIGTERM to every node (each leaves politely), SIGKILL after STOP_LIMIT."""
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_LIMIT
        for p in self.procs.values():
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
