"""Helpers shared by the tests."""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ("tiny:sd1", "tiny:sd2", "tiny:sdxl")


def run_cli(args, cwd=None):
    """Run ``python -m edit_bench ARGS`` in-process; returns the exit code."""
    from edit_bench.__main__ import run

    old = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        return run([str(a) for a in args])
    except SystemExit as e:  # --print_config and argparse errors exit
        return e.code if isinstance(e.code, int) else 1
    finally:
        os.chdir(old)


def fast_kwargs(editor_name: str) -> dict:
    """The editor's declared small-budget form (``Editor.contract_args``), which the public contract checker uses too."""
    from edit_bench.editors import discover

    return dict(discover()[editor_name].contract_args)
