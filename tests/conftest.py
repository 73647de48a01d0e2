"""Shared test set-up: offline, quiet, CPU."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before any hub library is imported
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

if "EDIT_BENCH_CACHE" not in os.environ:  # statistics caches of this test session go to a fresh directory
    import tempfile

    os.environ["EDIT_BENCH_CACHE"] = tempfile.mkdtemp(prefix="edit_bench_cache_")
