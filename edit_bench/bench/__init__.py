"""Measurement scripts that print numbers (``python -m edit_bench.bench.NAME``)."""
