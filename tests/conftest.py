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


# The longest tests (measured on 2 CPU cores, in seconds), run first: pytest-xdist hands tests out in collection order,
# so the longest ones first keep the two workers busy to the end instead of one finishing a long test alone (largest
# first is the classic schedule for two machines). A stale entry costs only balance, never a result.
LONGEST_FIRST = (
    "test_readme_and_configs.py::test_every_readme_command_runs[0]",  # ~300
    "test_readme_and_configs.py::test_every_readme_command_runs[1]",  # ~250
    "test_readme_and_configs.py::test_readme_benchmark_scripts_run",  # ~80
    "test_provenance.py::test_sigterm_during_fit_exits_143_and_the_rerun_resumes_to_the_uninterrupted_delta",  # ~80
    "test_trainable.py::test_two_processes_with_batch_1_train_the_delta_of_one_process_with_batch_2",  # ~35-55 each
    "test_table_command.py::test_a_table_runs_its_rows_marks_a_failed_one_resumes_and_shares_the_baseline",  # ~45
    "test_toy.py::test_artist_erasure_baseline_draws_the_style_the_judge_sees",  # ~35
    "test_toy.py::test_editing_moves_efficacy_and_a_no_op_editor_fails",  # ~30
    "test_cli.py::test_two_processes_equal_one_process",  # ~30
    "test_report.py::test_report_writes_tables_the_refact_layout_and_a_grid",  # ~30 (its fixture)
    "test_state.py::test_two_runs_started_together_into_one_directory_one_runs_and_one_is_refused",  # ~25
)


def pytest_collection_modifyitems(config, items):
    def rank(item):
        rel = item.nodeid.split("tests/", 1)[-1]
        return next((i for i, key in enumerate(LONGEST_FIRST) if rel.startswith(key)), len(LONGEST_FIRST))

    items.sort(key=rank)  # stable: every other test keeps its collection order
