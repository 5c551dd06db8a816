# The program of the article tstore implements, unchanged. Run it with a
# tstore executable on PATH (or TSTORE_BIN=...): TStoreCluster.start()
# starts the two local nodes when nothing listens on their ports.
from tstore import TStoreCluster

cluster = TStoreCluster()
cluster.add_node("127.0.0.1:8001")
cluster.add_node("127.0.0.1:8002")
cluster.start()

table = cluster.create_table("user")
table.replicate(["127.0.0.1:8001"], ["127.0.0.1:8002"])      # primary on 8001, backup on 8002

sharded_table = cluster.create_table("sharded_user")
sharded_table.shard_key("id", "127.0.0.1:8001", "127.0.0.1:8002")   # hash-shard by id over these nodes

for data in [{"id": 1, "name": "Alice", "age": 25},
             {"id": 2, "name": "Bob", "age": 30},
             {"id": 3, "name": "Charlie", "age": 35}]:
    sharded_table.insert(data)
