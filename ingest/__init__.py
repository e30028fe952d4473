"""Ingest: read raw clips from a source, decode them with FFmpeg (PyAV), run the frozen
encoders, and write a shard set (`python -m ingest`)."""
