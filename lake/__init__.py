"""The data lake's lowest layer: shard-set schema, catalog, taxonomy, splits, storage, ranks.

Nothing here imports from ingest/, shards/, trainers/ or evaluation/ (except the
demo orchestrator, `lake/demo.py`, which sits above everything and which nothing
imports).
"""
