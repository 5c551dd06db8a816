"""One TStoreCluster used from several Python threads at once."""

import threading


def test_one_cluster_many_threads(cluster):
    t = cluster.create_table("threads", shards=4, replicas=3)
    t.put({"id": "counter", "n": 0})
    errors = []
    threads_n, per_thread, increments = 8, 60, 10

    def work(tid):
        try:
            for i in range(per_thread):
                key = tid * 1000 + i
                t.put({"id": key, "by": tid, "i": i})
                assert t.get(key)["i"] == i
            # Compare-and-set increments of one shared row.
            done = 0
            while done < increments:
                row = t.get("counter")
                try:
                    t.update("counter", {"n": row["n"] + 1}, if_version=row.version)
                    done += 1
                except Exception as e:  # a lost race: read again
                    if type(e).__name__ != "ConflictError":
                        raise
            cluster.members()
            cluster.describe("threads")
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(threads_n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    rows = list(t.scan())
    assert len(rows) == threads_n * per_thread + 1
    assert t.get("counter")["n"] == threads_n * increments
