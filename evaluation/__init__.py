"""Evaluation of each stage on a shard set: metrics, JSON + Markdown reports, plots; `python -m evaluation`."""
