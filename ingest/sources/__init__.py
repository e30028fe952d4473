"""Readers for the published layouts: LAION's Got Talent tars and MELD (CSVs + mp4s)."""
