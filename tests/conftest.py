"""Shared test set-up: offline, quiet, CPU."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before any hub library is imported
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
