"""``report --html PAGE.html``: one self-contained page per comparison, opened from disk with no server and no network.

What the page holds:

- the runs' table (one row per run and per distinct unedited baseline; every cell ``mean ± std (n)``), sortable by
  any column, and, with ``--table NAME``, the published table with ours beside the paper's (each deviation from the
  paper's protocol named in its row, as ``report --table`` prints it);
- per case, the prompt groups (efficacy, generality, specificity, paraphrases, attacks, concept-absent twins) as
  image strips: the unedited model's image, then each run's image of the same prompt and seed, each captioned with
  its prompt, seed and the judge's verdict (in words, never only a colour) and with the same text as alt text;
  filtering by case and group, and paging, in the page's own script;
- the sequential curve and the attack success rates as plots (inline SVG) with their numbers in a table beside them;
- every run's provenance and protocol, one click away (``<details>``).

Images: the runs' stored PNGs (``eval --save_images true``), else drawn again from each run's config (as ``--grid``
does); ``--no-regenerate`` refuses a run without them. Each image becomes a thumbnail (longest side ``thumb`` px, 128
by default; PNG up to 64 px, so a toy image of 32 px stays exact; JPEG above), embedded in the page up to
``EMBED_LIMIT`` images and written to ``PAGE_files/`` beside it beyond (a browser holds neither a 500 MB page nor its
JSON). A large table is made usable by its sample choice and its paging: ``prompts`` prompts per case and group (the
first seed of each; 0 = every prompt and seed) go in the page, and it shows ``PAGE_SIZE`` strips at a time.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

from .errors import UsageError

PAGE_SIZE = 40  # image strips on screen at a time
GROUP_ORDER = ("efficacy", "generality", "specificity", "erased", "prompts", "kept", "paraphrase", "captions")


def check_html_inputs(runs: list[dict], page: str | Path) -> None:
    """Refuse, before anything is written, runs that cannot sit in one page or a page path that exists."""
    page = Path(page)
    if page.exists():
        raise UsageError(f"{page} exists: give a new path for the page (report never overwrites one)")
    if folder_of(page).exists():
        raise UsageError(f"{folder_of(page)} exists (where the page would put its images): give a new path for the page")
    if page.suffix.lower() not in (".html", ".htm"):
        raise UsageError(f"--html {page}: the page's name must end in .html")
    data = sorted({r["_data"] for r in runs})
    if len(data) > 1:
        raise UsageError(f"the runs are of {len(data)} benchmarks ({', '.join(data)}): one page compares runs of one "
                         "benchmark; report each benchmark's runs separately")


def _order(sid: str) -> tuple:
    case, group, idx, seed = sid.rsplit("/", 3)
    base = group.split(":", 1)[0]
    rank = GROUP_ORDER.index(base) if base in GROUP_ORDER else len(GROUP_ORDER)
    return case, rank, group, int(idx), int(seed)


def choose_samples(ids: set[str], prompts: int) -> list[str]:
    """The page's samples: per case and group the first ``prompts`` prompts with the first seed of each (all of
    them with ``prompts`` 0), in case, group, prompt order."""
    chosen, seen_seed = [], {}
    for sid in sorted(ids, key=_order):
        case, group, idx, seed = sid.rsplit("/", 3)
        if prompts == 0:
            chosen.append(sid)
            continue
        key = (case, group)
        taken = seen_seed.setdefault(key, {})
        if idx in taken or len(taken) >= prompts:
            continue
        taken[idx] = seed
        chosen.append(sid)
    return chosen


def verdict(scores: dict) -> str:
    """The judge's verdict on one image, in words (from its stored record)."""
    if "success" in scores:
        return "edit holds (the expected label wins)" if scores["success"] == 1 else "edit fails (the other label wins)"
    top = next((k for k in scores if k.endswith("/top1")), None)
    if top is not None:
        return f"classified as its concept ({top})" if scores[top] == 1 else f"not classified as its concept ({top})"
    anyk = next((k for k in scores if k.endswith("/any")), None)
    if anyk is not None:
        return f"detected ({anyk})" if scores[anyk] == 1 else f"not detected ({anyk})"
    return "no verdict (no judge scores this group)"


def _thumb(img, size: int) -> tuple[bytes, str]:
    """A ``[3, H, W]`` image in [0, 1] as a thumbnail file's bytes and type, its longest side at most ``size``: PNG
    up to 64 px (exact pixels: the toy world's images), JPEG (quality 85) above."""
    from PIL import Image

    arr = (img.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype("uint8")
    im = Image.fromarray(arr)
    if max(im.size) > size:
        im.thumbnail((size, size), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    kind = "png" if max(im.size) <= 64 else "jpeg"
    im.save(buf, format=kind.upper(), **({"optimize": True} if kind == "png" else {"quality": 85}))
    return buf.getvalue(), kind


def folder_of(page: str | Path) -> Path:
    """The folder beside ``page`` that holds its images when they are not embedded: ``PAGE_files/``."""
    page = Path(page)
    return page.with_name(page.stem + "_files")


def _images(r: dict, variant: str, ids: list[str], regenerate: bool, allow_missing: bool = False) -> dict:
    """``{sample id: image}`` of one run's variant: stored, or drawn again; ``None`` for a sample it never drew (and,
    with ``allow_missing``, for one it did not store)."""
    from .report_runs import _regenerate, _stored_image

    stored = {sid: _stored_image(r["_dir"], variant, sid) for sid in ids}
    missing = [sid for sid, v in stored.items() if v is None]
    if missing and allow_missing:
        return stored
    if missing:
        if not regenerate:
            raise UsageError(f"{r['_dir']} saved no images of {len(missing)} sample(s) (eval --save_images true); drop "
                             "--no-regenerate to draw them again from the run's config")
        stored.update(_regenerate(r, missing, variant))
    return stored


def _svg(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]  # inline: no XML prolog


def _plots(runs: list[dict]) -> list[dict]:
    """The sequential curves and the attack rates, each as an SVG with its numbers (a table beside it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .report_runs import _label

    out = []
    curves = [(r, r["curve"]) for r in runs if r.get("curve")]
    if curves:
        keys = [k for k in ("efficacy", "generality", "specificity") if k in curves[0][1][-1]["metrics"]] \
            or list(curves[0][1][-1]["metrics"])[:3]
        fig, ax = plt.subplots(figsize=(5.5, 3.2))
        rows = []
        styles = ["-", "--", ":", "-."]
        for i, (r, curve) in enumerate(curves):
            for j, k in enumerate(keys):
                xs = [c["edits"] for c in curve if k in c["metrics"]]
                ys = [c["metrics"][k]["mean"] for c in curve if k in c["metrics"]]
                ax.plot(xs, ys, styles[j % 4], marker="os^D"[j % 4], label=f"{_label(r)}: {k}")
                rows += [[_label(r), k, x, f"{y:.3f}"] for x, y in zip(xs, ys)]
        ax.set_xlabel("edits made")
        ax.set_ylabel("mean")
        ax.legend(fontsize=6)
        out.append({"title": "After each sequential edit", "svg": _svg(fig),
                    "alt": f"line plot of {', '.join(keys)} against the number of edits, for {len(curves)} run(s)",
                    "header": ["run", "metric", "edits", "mean"], "rows": rows})
    attacked = [(r, r["attacks"]) for r in runs if r.get("attacks")]
    if attacked:
        rates = ("asr_pre", "asr", "asr_union")
        bars = [(f"{_label(r)} / {name}", a) for r, atk in attacked for name, a in atk.items()]
        fig, ax = plt.subplots(figsize=(5.5, 0.5 + 0.45 * len(bars) * len(rates)))
        rows, y = [], 0
        for label, a in bars:
            for j, k in enumerate(rates):
                v = (a.get(k) or {}).get("mean")
                if v is not None:
                    ax.barh(y, v, hatch=["", "//", ".."][j], edgecolor="black", color=["#bbbbbb", "#4477aa", "#ee6677"][j])
                    ax.text(v, y, f" {k} {v:.3f}", va="center", fontsize=6)
                rows.append([label, k, "—" if v is None else f"{v:.3f}", (a.get(k) or {}).get("n", "—")])
                y += 1
            y += 0.5
        ax.set_yticks([])
        ax.set_xlim(0, 1.15)
        ax.set_xlabel("attack success rate (asr_pre: plain prompt; asr: attacked; asr_union: either, per sample)")
        out.append({"title": "Attack success rates", "svg": _svg(fig),
                    "alt": f"bars of asr_pre, asr and asr_union for {len(bars)} attack(s)",
                    "header": ["run / attack", "rate", "value", "n"], "rows": rows})
    return out


def _md_table_html(md: str) -> str:
    """A markdown document of tables and lines (``report --table``'s) as HTML."""
    out, rows = [], []

    def flush():
        if rows:
            head, body = rows[0], [r for r in rows[1:] if not set("".join(r)) <= set("-: ")]
            out.append("<table class='published'><thead><tr>" + "".join(f"<th scope='col'>{html.escape(c)}</th>" for c in head)
                       + "</tr></thead><tbody>" + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                                                            for r in body) + "</tbody></table>")
            rows.clear()

    for line in md.splitlines():
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
            continue
        flush()
        if line.startswith("#"):
            out.append(f"<h3>{html.escape(line.lstrip('#').strip())}</h3>")
        elif line.strip():
            out.append(f"<p>{html.escape(line)}</p>")
    flush()
    return "\n".join(out)


EMBED_LIMIT = 2000  # images embedded in the page (base64) up to this many; beyond, files in PAGE_files/


def build_page(runs: list[dict], published_md: str | None = None, prompts: int = 2, thumb: int = 128,
               regenerate: bool = True, page: str | Path = "page.html", images: str = "auto",
               allow_missing: bool = False) -> tuple[str, dict]:
    """The page's HTML and the image files to write beside it (``{name: bytes}`` in ``PAGE_files/``; none when the
    images are embedded): ``images`` ``embed``, ``folder``, or ``auto`` (embedded up to ``EMBED_LIMIT`` images).
    ``allow_missing``: an image a run did not store is shown as missing instead of drawn again or refused (the
    ``table`` command's page, whose rows store their images)."""
    from .report_runs import _label, table_rows
    from .rundir import RunDir

    records = [RunDir(r["_dir"], "eval", {}).load_records("samples") for r in runs]
    common = set(records[0])
    for rec in records[1:]:
        common &= set(rec)
    if not common:
        raise UsageError("the runs share no sample: a page compares runs of the same benchmark and seeds")
    chosen = choose_samples(common, prompts)
    with_baseline = [i for i, r in enumerate(runs) if r.get("baseline")]
    if allow_missing and with_baseline:  # the run that drew (and stored) the unedited images; later ones read the cache
        from .report_runs import _stored_image

        with_baseline.sort(key=lambda i: -sum(_stored_image(runs[i]["_dir"], "baseline", sid) is not None for sid in chosen[:8]))
    base_run = with_baseline[0] if with_baseline else None
    base_records = RunDir(runs[base_run]["_dir"], "eval", {}).load_records("baseline") if base_run is not None else {}
    # every run's images first (a refusal comes before any thumbnail is made)
    edited = [_images(r, "samples", chosen, regenerate, allow_missing) for r in runs]
    unedited, unedited_records = {}, {}
    if base_run is not None:
        with_base = [sid for sid in chosen if sid in base_records]
        unedited = _images(runs[base_run], "baseline", with_base, regenerate, allow_missing)
        unedited_records = base_records
    if not any(v is not None for v in unedited.values()):
        # no stored unedited image: the unedited model, drawn again from the first run's config (no edit to redo)
        from .report_runs import _regenerate

        if not regenerate and not allow_missing:
            raise UsageError("no run stored the unedited model's images and --no-regenerate forbids drawing them")
        r0 = runs[0]
        spec = {**r0, "_config": {**r0["_config"], "model": {"class_path": "edit_bench.editors.unedited.Unedited",
                                                            "init_args": {"base": r0["_config"]["model"]["init_args"].get("base", "toy")}}}}
        unedited = _regenerate(spec, chosen, "baseline")
    columns = ["unedited"] + [_label(r) for r in runs]
    count = len(chosen) * len(columns)
    folder = images == "folder" or (images == "auto" and count > EMBED_LIMIT)
    files: dict[str, bytes] = {}

    def source(img) -> str:
        data, kind = _thumb(img, thumb)
        if not folder:
            return f"data:image/{kind};base64," + base64.b64encode(data).decode()
        name = f"{len(files):06d}.{'png' if kind == 'png' else 'jpg'}"
        files[name] = data
        return f"{folder_of(Path(page)).name}/{name}"

    strips = []
    for sid in chosen:
        rec = records[0][sid]
        cells = []
        for label, imgs, recs in [("unedited", unedited, unedited_records)] + \
                [(columns[i + 1], edited[i], records[i]) for i in range(len(runs))]:
            img = imgs.get(sid)
            r = recs.get(sid)
            v = verdict(r.scores) if r is not None else "not scored"
            cells.append({"column": label, "src": source(img) if img is not None else None, "verdict": v,
                          "alt": f"{label}: {rec.prompt} (seed {rec.seed}) - {v}"})
        strips.append({"id": sid, "case": rec.case, "group": rec.group, "prompt": rec.prompt, "seed": rec.seed,
                       "cells": cells})
    rows = table_rows(runs)
    names = list(dict.fromkeys(k for row in rows for k in row["metrics"]))
    data = {"columns": columns, "strips": strips, "page_size": PAGE_SIZE,
            "runs": [{"dir": r["_dir"], "label": _label(r), "editor": r["editor"], "model": r["model"],
                      "metrics": r["metrics"], "baseline": r.get("baseline"), "attacks": r.get("attacks"),
                      "curve": r.get("curve")} for r in runs]}
    return _render(runs, rows, names, data, _plots(runs), published_md), files


def write_page(page: str | Path, text: str, files: dict[str, bytes]) -> None:
    """The page's image folder (written whole under a temporary name, then renamed), then the page itself."""
    import shutil
    import tempfile

    from .io import write_atomic

    page = Path(page)
    if files:
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder_of(page).name}.", dir=page.parent))
        try:
            for name, data in files.items():
                (tmp / name).write_bytes(data)
            tmp.rename(folder_of(page))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    write_atomic(page, text)


def _cell(m: dict | None) -> str:
    if not m:
        return "<td data-value=''>—</td>"
    mean = m.get("mean")
    if mean is None:
        return "<td data-value=''>—</td>"
    return f"<td data-value='{mean!r}'>{mean:.3f} ± {m.get('std', 0):.3f} <span class='n'>(n={m.get('n')})</span></td>"


def _render(runs, rows, names, data, plots, published_md) -> str:
    esc = html.escape
    bench = runs[0]["_data"]
    head = "".join(f"<th scope='col'><button type='button' data-col='{i}'>{esc(h)}</button></th>"
                   for i, h in enumerate(["method", "model", *names, "edit_s"]))
    body = []
    for row in rows:
        edit = row["edit_s"]
        body.append("<tr>" + f"<th scope='row' data-value='{esc(row['method'])}'>{esc(row['method'])}</th>"
                    + f"<td data-value='{esc(row['model'])}'>{esc(row['model'])}</td>"
                    + "".join(_cell(row["metrics"].get(k)) for k in names)
                    + (f"<td data-value='{edit!r}'>{edit:.3f}</td>" if edit is not None else "<td data-value=''>—</td>") + "</tr>")
    plots_html = "".join(
        f"<figure><figcaption>{esc(p['title'])}</figcaption><div role='img' aria-label='{esc(p['alt'])}'>{p['svg']}</div>"
        "<details><summary>the numbers</summary><table><thead><tr>" + "".join(f"<th scope='col'>{esc(h)}</th>" for h in p["header"])
        + "</tr></thead><tbody>" + "".join("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in r) + "</tr>" for r in p["rows"])
        + "</tbody></table></details></figure>" for p in plots)
    prov = "".join(
        f"<details><summary>{esc(r['editor'])} — {esc(r['_dir'])}</summary><pre>"
        f"{esc(json.dumps({'protocol': r.get('protocol'), 'provenance': r.get('provenance'), 'editor_args': r.get('editor_args')}, indent=1, default=str))}"
        "</pre></details>" for r in runs)
    cases = sorted({s["case"] for s in data["strips"]})
    groups = sorted({s["group"] for s in data["strips"]}, key=lambda g: _order(f"c/{g}/0/0"))
    opts = lambda xs: "".join(f"<option value='{esc(x)}'>{esc(x)}</option>" for x in xs)  # noqa: E731
    payload = json.dumps(data, default=str).replace("</", "<\\/")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>edit_bench: {esc(bench)} ({len(runs)} run{'s' if len(runs) > 1 else ''})</title>
<style>
body {{ font: 15px/1.45 system-ui, sans-serif; margin: 0 auto; padding: 0.8em; max-width: 1200px; color: #111; background: #fff; }}
table {{ border-collapse: collapse; margin: 0.5em 0; font-size: 13px; }}
th, td {{ border: 1px solid #999; padding: 0.2em 0.45em; text-align: left; vertical-align: top; }}
.scroll {{ overflow-x: auto; }}
th button {{ font: inherit; font-weight: bold; background: none; border: 0; padding: 0; cursor: pointer; text-align: left; }}
th[aria-sort=ascending] button::after {{ content: " ▲ (ascending)"; }}
th[aria-sort=descending] button::after {{ content: " ▼ (descending)"; }}
.n {{ color: #555; font-size: 11px; }}
.controls {{ display: flex; flex-wrap: wrap; gap: 0.8em; align-items: center; margin: 0.6em 0; }}
.strip {{ border-top: 1px solid #bbb; padding: 0.4em 0; }}
.strip h4 {{ margin: 0 0 0.3em; font-size: 14px; }}
.cells {{ display: flex; flex-wrap: wrap; gap: 0.5em; }}
figure.cell {{ margin: 0; width: 140px; font-size: 12px; }}
figure.cell figcaption {{ overflow-wrap: anywhere; }}
figure.cell img {{ width: 128px; height: auto; image-rendering: pixelated; border: 1px solid #777; }}
.verdict {{ font-style: italic; }}
figure svg {{ max-width: 100%; height: auto; }}
pre {{ white-space: pre-wrap; font-size: 11px; max-height: 30em; overflow: auto; }}
@media (max-width: 600px) {{ figure.cell {{ width: 46%; }} figure.cell img {{ width: 100%; }} }}
</style></head><body>
<header><h1>{esc(bench)}: {len(runs)} run{'s' if len(runs) > 1 else ''}</h1>
<p>Model: {esc(', '.join(sorted({r['model'] for r in runs})))}. Made by <code>python -m edit_bench report --html</code>;
every number is read from the runs' <code>results.json</code>.</p></header>
<main>
<section aria-labelledby="t"><h2 id="t">Results</h2><p>Click a column's name to sort by it (again to reverse).</p>
<div class="scroll"><table id="results"><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>
{('<h2>Ours beside the paper' + "'" + 's</h2><div class="scroll">' + _md_table_html(published_md) + '</div>') if published_md else ''}
</section>
{('<section aria-labelledby="p"><h2 id="p">Plots</h2>' + plots_html + '</section>') if plots else ''}
<section aria-labelledby="i"><h2 id="i">Images</h2>
<p>Each strip: one prompt and seed; the unedited model's image, then each run's. Under each image, the judge's verdict.</p>
<div class="controls">
<label>Case <select id="case"><option value="">all cases</option>{opts(cases)}</select></label>
<label>Group <select id="group"><option value="">all groups</option>{opts(groups)}</select></label>
<button type="button" id="prev">previous page</button><span id="pageinfo" aria-live="polite"></span>
<button type="button" id="next">next page</button></div>
<div id="strips"></div></section>
<section aria-labelledby="v"><h2 id="v">Provenance</h2>{prov}</section>
</main>
<script type="application/json" id="data">{payload}</script>
<script>
(function () {{
  const data = JSON.parse(document.getElementById("data").textContent);
  let page = 0;
  const el = (t, attrs, text) => {{ const e = document.createElement(t); Object.assign(e, attrs || {{}}); if (text) e.textContent = text; return e; }};
  function shown() {{
    const c = document.getElementById("case").value, g = document.getElementById("group").value;
    return data.strips.filter(s => (!c || s.case === c) && (!g || s.group === g));
  }}
  function draw() {{
    const all = shown(), n = Math.max(1, Math.ceil(all.length / data.page_size));
    page = Math.min(page, n - 1);
    const box = document.getElementById("strips");
    box.replaceChildren();
    for (const s of all.slice(page * data.page_size, (page + 1) * data.page_size)) {{
      const strip = el("article", {{className: "strip"}});
      strip.dataset.case = s.case; strip.dataset.group = s.group;
      strip.append(el("h4", {{}}, s.case + " · " + s.group + " · \u201c" + s.prompt + "\u201d · seed " + s.seed));
      const cells = el("div", {{className: "cells"}});
      for (const c of s.cells) {{
        const f = el("figure", {{className: "cell"}});
        if (c.src) f.append(el("img", {{src: c.src, alt: c.alt, loading: "lazy"}}));
        else f.append(el("p", {{}}, "no image"));
        const cap = el("figcaption");
        cap.append(el("div", {{}}, c.column));
        cap.append(el("div", {{className: "verdict"}}, c.verdict));
        f.append(cap); cells.append(f);
      }}
      strip.append(cells); box.append(strip);
    }}
    document.getElementById("pageinfo").textContent = "page " + (page + 1) + " of " + n + " (" + all.length + " strips)";
    document.getElementById("prev").disabled = page === 0;
    document.getElementById("next").disabled = page >= n - 1;
  }}
  document.getElementById("case").onchange = () => {{ page = 0; draw(); }};
  document.getElementById("group").onchange = () => {{ page = 0; draw(); }};
  document.getElementById("prev").onclick = () => {{ page--; draw(); }};
  document.getElementById("next").onclick = () => {{ page++; draw(); }};
  const table = document.getElementById("results");
  table.querySelectorAll("thead button").forEach(b => b.onclick = () => {{
    const i = +b.dataset.col, th = b.parentElement, asc = th.getAttribute("aria-sort") !== "ascending";
    table.querySelectorAll("thead th").forEach(h => h.removeAttribute("aria-sort"));
    th.setAttribute("aria-sort", asc ? "ascending" : "descending");
    const key = r => r.children[i].dataset.value;
    const rows = [...table.tBodies[0].rows].sort((a, b) => {{
      const x = key(a), y = key(b), nx = parseFloat(x), ny = parseFloat(y);
      if (x === "" || y === "") return (x === "") - (y === "");
      const d = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
      return asc ? d : -d;
    }});
    table.tBodies[0].append(...rows);
  }});
  draw();
}})();
</script></body></html>
"""
