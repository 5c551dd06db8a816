"""Python client throughput: a thread pool driving one TStoreCluster,
closed loop, beside `tstore bench` on the same cluster.

    python examples/bench.py --seeds 127.0.0.1:7401 --certs tstore-demo/certs \\
        --ops 50000 --concurrency 64 --value-size 100 --mix write:50,read:50

Without --seeds it starts a local 3-node cluster (TSTORE_BIN or PATH) and,
with --compare, runs `tstore bench` on it with the same settings afterwards.
"""

import argparse
import os
import random
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from tstore import TStoreCluster, _local


def free_addrs(n):
    """`n` consecutive loopback addresses whose UDP ports nothing holds."""
    for base in range(27000 + os.getpid() % 500 * 10, 60000, 10):
        addrs = [f"127.0.0.1:{p}" for p in range(base, base + n)]
        if not any(_local.is_listening(a) for a in addrs):
            return addrs
    raise RuntimeError("no free ports")


def percentile(sorted_values, p):
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * p))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default=None, help="host:port,... of a running cluster")
    ap.add_argument("--certs", default=None)
    ap.add_argument("--table", default="pybench")
    ap.add_argument("--ops", type=int, default=50_000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--value-size", type=int, default=100)
    ap.add_argument("--keys", type=int, default=10_000)
    ap.add_argument("--mix", default="write:50,read:50")
    ap.add_argument("--read", default="strong")
    ap.add_argument("--compare", action="store_true", help="then run `tstore bench` with the same settings")
    args = ap.parse_args()
    mix = dict(part.split(":") for part in args.mix.split(","))
    write_share = int(mix.get("write", 0)) / (int(mix.get("write", 0)) + int(mix.get("read", 0)))

    seeds = args.seeds.split(",") if args.seeds else free_addrs(3)
    cluster = TStoreCluster(seeds=seeds, certs=args.certs)
    cluster.start()
    try:
        names = [t.name for t in cluster.tables()]
        table = cluster.table(args.table) if args.table in names else cluster.create_table(args.table, shards=8)
        value = "x" * args.value_size
        table.import_rows(({"id": k, "v": value} for k in range(args.keys)), concurrency=args.concurrency)

        counter = iter(range(args.ops))
        lock = threading.Lock()
        lat = {"write": [], "read": []}
        errors = [0]

        def worker(seed):
            rnd = random.Random(seed)
            mine = {"write": [], "read": []}
            while True:
                with lock:
                    if next(counter, None) is None:
                        break
                key = rnd.randrange(args.keys)
                kind = "write" if rnd.random() < write_share else "read"
                t0 = time.perf_counter()
                try:
                    if kind == "write":
                        table.put({"id": key, "v": value})
                    else:
                        table.get(key, consistency=args.read)
                except Exception:  # noqa: BLE001 - counted
                    errors[0] += 1
                mine[kind].append(time.perf_counter() - t0)
            with lock:
                for k in mine:
                    lat[k].extend(mine[k])

        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            list(pool.map(worker, range(args.concurrency)))
        elapsed = time.perf_counter() - t0
        done = sum(len(v) for v in lat.values())
        print(f"python client: {done} ops in {elapsed:.2f}s = {done / elapsed:,.0f} ops/s, {errors[0]} errors "
              f"(concurrency {args.concurrency}, {args.value_size}-byte values, {args.keys} keys, mix {args.mix}, read {args.read})")
        for k, v in lat.items():
            v.sort()
            if v:
                print(f"  {k:5}: {len(v)} ops, p50 {percentile(v, 0.5) * 1000:.2f} ms, "
                      f"p99 {percentile(v, 0.99) * 1000:.2f} ms, max {v[-1] * 1000:.2f} ms")
        if args.compare:
            binary = _local.find_binary()
            cmd = [binary, "bench", "--node", seeds[0], "--certs", cluster.certs, "--table", args.table + "_rs",
                   "--ops", str(args.ops), "--concurrency", str(args.concurrency),
                   "--value-size", str(args.value_size), "--keys", str(args.keys),
                   "--mix", args.mix, "--read", args.read]
            print("$ " + " ".join(cmd))
            subprocess.run(cmd, check=False)
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
