"""Shared test set-up: offline, quiet, CPU."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before any hub library is imported
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest -n N: one torch thread per worker (the tiny models gain little
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # from a second thread; N workers share the cores instead)
    os.environ.setdefault("MKL_NUM_THREADS", "1")

    import torch

    torch.set_num_threads(1)

if "EDIT_BENCH_CACHE" not in os.environ:  # statistics caches of this test session go to a fresh directory
    import tempfile

    os.environ["EDIT_BENCH_CACHE"] = tempfile.mkdtemp(prefix="edit_bench_cache_")
