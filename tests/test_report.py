"""``python -m edit_bench report``: tables, ReFACT Table 1's layout and image grids from stored toy runs."""

import csv
import json

import pytest

from helpers import ROOT, run_cli


@pytest.fixture(scope="module")
def toy_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    runs = {}
    for name, editor, data, extra in (
            ("time", "time", "toy_timed", ["--data.rows", "0:1", "--data.sampler.seeds", "[0]", "--save_images", "true"]),
            ("uce", "uce", "toy_timed", ["--data.rows", "0:1", "--data.sampler.seeds", "[0]"]),
            ("uce_q", "uce", "toy_captions", ["--data.n", "8"]),
            ("time_2seeds", "time", "toy_timed", ["--data.rows", "0:1", "--data.sampler.seeds", "[0, 1]"]),
            ("unedited", "unedited", "toy_timed", ["--data.rows", "0:1", "--data.sampler.seeds", "[0]"])):
        runs[name] = root / name
        assert run_cli(["eval", "--model", ROOT / f"configs/editor/{editor}.yaml", "--data", ROOT / f"configs/benchmark/{data}.yaml",
                        *extra, "--out_dir", runs[name]]) == 0
    return runs


def test_report_writes_tables_the_refact_layout_and_a_grid(toy_runs, tmp_path):
    out = tmp_path / "report"
    assert run_cli(["report", toy_runs["time"], toy_runs["uce"], toy_runs["uce_q"], "--out", out, "--grid", "3"]) == 0
    md = (out / "table.md").read_text()
    res = {k: json.loads((toy_runs[k] / "results.json").read_text()) for k in ("time", "uce", "uce_q")}
    # one row per run and per distinct baseline; every metric as mean ± std (n)
    assert md.count("| toy_timed |") == 3 and md.count("| toy_captions |") == 2
    e = res["time"]["metrics"]["efficacy"]
    assert f"{e['mean']:.3f} ± {e['std']:.3f} (n={e['n']})" in md
    rows = list(csv.DictReader(open(out / "table.csv")))
    assert [r["method"].split(" ")[0] for r in rows] == ["unedited", "TIME", "UCE", "unedited", "UCE"]
    assert float(rows[1]["specificity_mean"]) == res["time"]["metrics"]["specificity"]["mean"]
    assert float(rows[1]["edit_s"]) == res["time"]["timing"]["edit_s"]
    t1 = (out / "refact_table1.md").read_text().splitlines()
    assert "toy FID (judge tower)" in t1[0] and "| FID" not in t1[0]  # the toy twin never poses as Inception FID
    uce = next(line for line in t1 if "| UCE" in line)
    q = res["uce_q"]["metrics"]
    assert f"{q['toy_fid']['mean']:.2f}" in uce and f"{q['clip_score']['mean']:.2f}" in uce  # from the captions run
    assert next(line for line in t1 if "| TIME" in line).endswith("| — | — |")  # no captions run for TIME
    from PIL import Image

    w, h = Image.open(out / "grid.png").size
    assert h > 300 and w > 300  # 3 prompts x (unedited, TIME, UCE); TIME's from stored PNGs, UCE's regenerated


def test_report_regenerates_exactly_what_was_stored(toy_runs):
    """The grid's regenerated images are the run's: TIME's stored PNGs equal the images remade from its config."""
    from edit_bench.report import _regenerate, _stored_image, load_run

    r = load_run(toy_runs["time"])
    ids = [json.loads(x)["id"] for x in (toy_runs["time"] / "samples" / "rank0.jsonl").read_text().splitlines()][:3]
    again = _regenerate(r, ids, "samples")
    for sid in ids:
        stored = _stored_image(r["_dir"], "samples", sid)
        assert (stored - again[sid]).abs().max() <= 1 / 255 + 1e-6  # the PNG's 8-bit rounding


def test_report_refuses_runs_of_different_protocols(toy_runs, tmp_path):
    from edit_bench.errors import UsageError
    from edit_bench.report import check_comparable, load_run

    with pytest.raises(UsageError, match=r"different protocols: seeds \[0, 1\] vs \[0\]"):
        check_comparable([load_run(toy_runs["time"]), load_run(toy_runs["time_2seeds"])])
    assert run_cli(["report", toy_runs["time"], toy_runs["time_2seeds"], "--out", tmp_path / "r"]) == 2
    assert not (tmp_path / "r").exists()
    assert run_cli(["report", tmp_path / "nothing", "--out", tmp_path / "r"]) == 2


def test_report_puts_the_unedited_model_beside_an_edit_and_pairs_quality_runs_by_full_arguments(toy_runs, tmp_path):
    """The unedited model's run shares every generation and scoring setting with an edited run (only the protocol
    differs: as_is vs per_case), so it is comparable; a quality run is paired with an edit run only when the editor's
    whole arguments and the model are the same."""
    from edit_bench.report import check_comparable, load_run, refact_table, table_rows

    runs = [load_run(toy_runs[k]) for k in ("unedited", "uce", "uce_q")]
    check_comparable(runs)
    assert run_cli(["report", toy_runs["unedited"], toy_runs["uce"], "--out", tmp_path / "r"]) == 0
    other = load_run(toy_runs["uce_q"])
    other["editor_args"] = {**other["editor_args"], "lam": 12345.0}  # another UCE: its FID is not this UCE's
    t1 = refact_table(table_rows([load_run(toy_runs["uce"]), other]))
    assert next(line for line in t1.splitlines() if "| UCE" in line).endswith("| — | — |")


# ------------------------------------------------------------------------------------------ report --html
def test_report_html_bad_input_is_one_line_and_writes_nothing(toy_runs, tmp_path, capsys):
    page, out = tmp_path / "page.html", tmp_path / "out"
    assert run_cli(["report", toy_runs["time"], toy_runs["uce_q"], "--html", page]) == 2
    assert "the runs are of 2 benchmarks (toy_captions, toy_timed): one page compares runs of one benchmark" in capsys.readouterr().err
    assert run_cli(["report", toy_runs["time"], toy_runs["uce"], "--html", page, "--out", out, "--no-regenerate"]) == 2
    err = capsys.readouterr().err.strip()
    assert "saved no images of" in err.splitlines()[0] and "drop --no-regenerate" in err.splitlines()[0]
    assert not page.exists() and not out.exists()  # refused before the tables were written too
    page.write_text("mine")
    assert run_cli(["report", toy_runs["time"], "--html", page]) == 2
    assert f"{page} exists: give a new path" in capsys.readouterr().err and page.read_text() == "mine"
    assert run_cli(["report", toy_runs["time"], "--html", tmp_path / "page.txt"]) == 2
    (tmp_path / "other_files").mkdir()  # where a page "other.html" would put its images
    assert run_cli(["report", toy_runs["time"], "--html", tmp_path / "other.html"]) == 2
    assert "other_files exists" in capsys.readouterr().err and not (tmp_path / "other.html").exists()
    assert run_cli(["report", toy_runs["time"]]) == 2  # neither --out nor --html


def _browser():
    """A headless Chromium driven by Selenium, or a skip that says how to get them."""
    import shutil

    how = ("the page tests open the page in a real browser: install Chromium and its driver from the distribution "
           "(Debian/Ubuntu: apt-get install chromium chromium-driver) and pip install -e \".[dev]\" (selenium)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip(how)
    binary = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    driver = shutil.which("chromedriver")
    if binary is None or driver is None:
        pytest.skip(how)
    opts = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        opts.add_argument(a)
    opts.binary_location = binary
    return webdriver.Chrome(service=Service(driver), options=opts)


def test_report_html_page_in_a_real_browser(toy_runs, tmp_path):
    """The page of TIME (stored images), UCE (images drawn again) and the unedited model, opened from disk in headless
    Chromium: every image loads and carries its prompt, seed and verdict; sorting and filtering change what is shown;
    the table's numbers are results.json's; it stays usable at a phone's width."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    page = tmp_path / "page.html"
    assert run_cli(["report", toy_runs["time"], toy_runs["uce"], toy_runs["unedited"], "--html", page,
                    "--html-prompts", "0"]) == 0
    html_text = page.read_text()
    assert "http://" not in html_text.replace("http://www.w3.org", "") and "https://" not in html_text  # no network
    res = {k: json.loads((toy_runs[k] / "results.json").read_text()) for k in ("time", "uce", "unedited")}
    d = _browser()
    try:
        d.get(page.as_uri())
        run = lambda js, *a: d.execute_script(js, *a)  # noqa: E731
        from selenium.webdriver.support.ui import WebDriverWait

        def loaded(img):  # images load lazily: each as it comes on screen
            run("arguments[0].scrollIntoView()", img)
            WebDriverWait(d, 10).until(lambda _: run("return arguments[0].complete && arguments[0].naturalWidth > 0", img))
            return True

        # every record of the three runs is on the page: 1 row x 11 prompts x 1 seed, paged 40 at a time
        assert run("return JSON.parse(document.getElementById('data').textContent).strips.length") == 11
        imgs = d.find_elements(By.CSS_SELECTOR, "#strips img")
        assert len(imgs) == 11 * 4  # unedited, TIME, UCE, the unedited run
        assert all(loaded(i) for i in imgs)
        rec = json.loads((toy_runs["time"] / "samples/rank0.jsonl").read_text().splitlines()[0])
        alt = imgs[1].get_attribute("alt")
        assert rec["prompt"] in alt and f"seed {rec['seed']}" in alt and ("edit holds" in alt or "edit fails" in alt)
        # the table holds results.json's numbers
        cells = run("return [...document.querySelectorAll('#results tbody tr')].map(r => [r.children[0].textContent, "
                    "[...r.children].map(c => c.dataset.value)])")
        heads = run("return [...document.querySelectorAll('#results thead th')].map(h => h.textContent)")
        col = heads.index("specificity")
        by = {name.split(" ")[0]: vals for name, vals in cells}
        assert float(by["TIME"][col]) == res["time"]["metrics"]["specificity"]["mean"]
        assert float(by["UCE"][col]) == res["uce"]["metrics"]["specificity"]["mean"]
        # sorting by a column orders the rows by it, both ways
        order = lambda: [float(v[col]) for _, v in run(  # noqa: E731
            "return [...document.querySelectorAll('#results tbody tr')].map(r => [0, [...r.children].map(c => c.dataset.value)])")]
        button = d.find_elements(By.CSS_SELECTOR, "#results thead button")[col]
        button.click()
        assert order() == sorted(order())
        button.click()
        assert order() == sorted(order(), reverse=True)
        # filtering by group shows that group's strips only
        Select(d.find_element(By.ID, "group")).select_by_value("specificity")
        groups = {s.get_attribute("data-group") for s in d.find_elements(By.CSS_SELECTOR, "#strips .strip")}
        assert groups == {"specificity"} and len(d.find_elements(By.CSS_SELECTOR, "#strips .strip")) == 5
        # a phone's width: nothing wider than the screen but the table's own scroll box
        d.set_window_size(390, 844)
        assert run("return document.documentElement.scrollWidth") <= 390 + 1
        # a large run's form: the images as files in PAGE_files/ beside the page, loaded from there
        big = tmp_path / "big.html"
        assert run_cli(["report", toy_runs["time"], "--html", big, "--html-images", "folder"]) == 0  # stored images only
        files = sorted((tmp_path / "big_files").iterdir())
        assert files and "base64" not in big.read_text()
        d.set_window_size(1280, 1000)
        d.get(big.as_uri())
        imgs = d.find_elements(By.CSS_SELECTOR, "#strips img")
        assert len(imgs) == len(files) and all(loaded(i) for i in imgs)
    finally:
        d.quit()
