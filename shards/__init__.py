"""Shard format v1 (one shard: write, read, map), the DDP-aware streaming loader, and the
inspection tools (`python -m shards`)."""
