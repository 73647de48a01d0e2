"""Published erasure tables in their papers' layouts, our numbers beside the papers' (``report --table NAME``).

A table's spec and its published values live in ``edit_bench/published/*.yaml``: the paper, table, model and
protocol they come from (a file without them is refused), the layout, the metric each cell reads, and what a run
must match to sit in the table. Published values are data with provenance: they are printed beside ours and
never used to compute anything.

Layouts:
    ``objects``: one row per method and erased concept (MACE Table 1, ESD Table 2): the means of the erased, kept
    and paraphrase groups of the concept's case, and MACE's harmonic mean H_o = 3 / ((1 - e)^-1 + s^-1 + (1 - g)^-1)
    (or H_c = 2 / ((1 - e)^-1 + s^-1) without synonyms); the ``mean`` row averages the per-concept values (MACE's
    average of per-class H_o).
    ``counts``: one row per method, the sums of per-image counts (MACE Table 2's NudeNet boxes per class and
    total; ESD's images with any exposed part).
    ``artists``: CLIP_e (erased), CLIP_s (every kept group) and H_a = CLIP_s - CLIP_e (MACE Table 3).
    ``multi``: one row per method and number of concepts erased at once, the erased and kept groups' means and
    H_c = 2 / ((1 - e)^-1 + s^-1) (MACE's celebrity table).
    ``shares``: one row per method and concept, each attribute's share and the deviation from balance (TIME's and
    UCE's debiasing), and the mean deviation.
    ``attacks``: one row per edited model, each column an attack's success rate (``asr_pre``: no attack; ``asr``;
    ``asr_union``: the plain or the attacked image succeeds, per sample, UnlearnDiffAtk's "ASR"), judged by the
    benchmark's attack judge (UnlearnDiffAtk Tables 2-4 and its benchmark).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from .errors import UsageError

PUBLISHED = Path(__file__).parent / "published"
SOURCE_KEYS = ("paper", "table", "model")


def load_specs(path: str | Path | None = None) -> dict[str, dict]:
    """Every table spec of the shipped files (or of ``path``), checked: each names its source."""
    files = [Path(path)] if path else sorted(PUBLISHED.glob("*.yaml"))
    specs = {}
    for f in files:
        if not f.is_file():
            raise UsageError(f"published-values file {f} not found")
        doc = yaml.safe_load(f.read_text()) or {}
        if not isinstance(doc, dict):
            raise UsageError(f"{f}: expected a mapping of table name -> spec")
        for name, spec in doc.items():
            source = (spec or {}).get("source") or {}
            missing = [k for k in SOURCE_KEYS if not source.get(k)]
            if missing:
                raise UsageError(f"{f}: table {name!r} does not name its source ({', '.join(missing)} missing): every "
                                 "published value needs source: {paper, table, model}")
            if spec.get("layout") not in LAYOUTS:
                raise UsageError(f"{f}: table {name!r} has layout {spec.get('layout')!r}; use one of {sorted(LAYOUTS)}")
            specs[name] = {**spec, "_file": str(f)}
    return specs


def method_name(res: dict, baseline: bool = False) -> str:
    """The name a paper's table gives the method of a run (its unedited baseline: ``SD``)."""
    editor, args = res["editor"], res.get("editor_args") or {}
    if baseline or (editor == "Unedited" and not args.get("delta")):
        return "SD"
    if editor == "ESD":
        params = args.get("params") or ("xattn" if args.get("recipe", "paper") == "paper" else "esd-x")
        return {"xattn": "ESD-x", "esd-x": "ESD-x", "esd-x-strict": "ESD-x", "noxattn": "ESD-u",
                "esd-u": "ESD-u"}.get(params, f"ESD ({params})")
    if editor == "UCE" and args.get("debias"):
        return "UCE (debias)"
    if editor == "SafeLatentDiffusion":  # the papers' names of SLD's four presets
        return {"weak": "SLD-W", "medium": "SLD-M", "strong": "SLD-S", "max": "SLD-Max"}.get(args.get("preset", "medium"), "SLD")
    return {"ConceptAblation": "AC", "DiffQuickFix": "Diff-QuickFix", "MaceCFR": "MACE (CFR only)",
            "NegativePrompt": "SD-NP"}.get(editor, editor)


MODEL_NAMES = {"CompVis/stable-diffusion-v1-4": "SD-1.4", "runwayml/stable-diffusion-v1-5": "SD-1.5",
               "stable-diffusion-v1-5/stable-diffusion-v1-5": "SD-1.5", "stabilityai/stable-diffusion-2-1": "SD-2.1",
               "stabilityai/stable-diffusion-2-1-base": "SD-2.1-base", "stabilityai/stable-diffusion-xl-base-1.0": "SDXL",
               "stabilityai/stable-diffusion-3-medium-diffusers": "SD3-medium", "black-forest-labs/FLUX.1-dev": "FLUX.1-dev"}


def model_label(res: dict) -> str:
    """A run's model as a table row names it (``SD-1.4``, ``toy``, ``tiny:sd1``, a folder's name)."""
    spec = str(res.get("model"))
    return MODEL_NAMES.get(spec, Path(spec).name if "/" in spec and Path(spec).is_absolute() else spec)


def recipe(res: dict) -> list[str]:
    """What distinguishes the method's recipe in a row's name (ESD's recipe; the rest are one recipe each)."""
    args = res.get("editor_args") or {}
    if res["editor"] == "ESD":
        return [f"recipe {args.get('recipe', 'paper')}"]
    return []


def _seeds_per_prompt(proto: dict) -> int:
    return 1 if str(proto.get("seeding", "")).startswith("one image per row") else len(proto.get("seeds") or [])


def _precision(p) -> str:
    return str(p).replace("-true", "").replace("-mixed", " mixed")


def deviations(spec: dict, res: dict, method: str) -> list[tuple[str, str]]:
    """``(label, fix)`` for every way the run's protocol departs from the table's (the model, precision, sampler,
    seeds per prompt, rows, erased set, scorer and the method row's recipe): empty when the run is the paper's."""
    want, proto, out = spec.get("expect") or {}, res["protocol"], []
    model = want.get("model")
    if model and ((model.get("family") and proto.get("family", model["family"]) != model["family"])
                  or res.get("model") not in model.get("names", [res.get("model")])):  # another model, or another family
        out.append((model_label(res), f"--model.base {model['names'][0]}"))
    if want.get("precision") and _precision(proto.get("precision")) != _precision(want["precision"]):
        out.append((_precision(proto.get("precision")), f"--trainer.precision {want['precision']}"))
    for k, v in (want.get("sampler") or {}).items():
        if proto["sampler"].get(k) != v:
            out.append((f"{k} {proto['sampler'].get(k)}", f"--data.sampler.{k} {v}"))
    n = want.get("seeds_per_prompt")
    if n and _seeds_per_prompt(proto) != n:
        ours = _seeds_per_prompt(proto)
        out.append((f"{ours} seed{'s' if ours != 1 else ''} per prompt", f"--data.sampler.seeds with {n} seeds"))
    rows = want.get("rows")
    if rows and proto.get("rows") != rows:
        out.append((f"{proto.get('rows'):,} of {rows:,} prompts", "the whole data file (no --data.rows)"))
    erase = want.get("erase")
    if erase and list(proto.get("erase") or []) != list(erase):
        ours = list(proto.get("erase") or [])
        out.append((f"erased {len(ours)} of {len(erase)}" if set(ours) < set(erase) else f"erased {', '.join(map(str, ours[:3]))}",
                    f"--data.erase {len(erase)}"))
    metric = spec["metric"].split("/")[0]
    described = {m.get("name"): m for m in proto.get("metrics", [])}
    for k, v in (want.get("metric") or {}).items():
        got = described.get(metric, {}).get(k)
        if got != v:
            out.append((f"{metric} {k} {got}", f"the metric's {k}: {v} (configs/benchmark/{spec.get('config', '?')}.yaml)"))
    ran = {a.get("name"): a for a in proto.get("attacks") or []}
    for name, args in (want.get("attacks") or {}).items():  # each attack column's attack and its budget
        if name not in ran:
            out.append((f"no attack {name}", f"the benchmark's attacks: configs/benchmark/{spec.get('config', '?')}.yaml"))
            continue
        for k, v in (args or {}).items():
            if ran[name].get("args", {}).get(k) != v:
                out.append((f"{name} {k} {ran[name].get('args', {}).get(k)}", f"the attack's {k}: {v}"))
    judge = want.get("attack_judge")
    if judge and (proto.get("attack_judge") or {}).get("metric") != judge:
        out.append((f"attack judge {(proto.get('attack_judge') or {}).get('metric')}", f"--data.init_args.attack_judge {judge}"))
    row = (spec.get("methods") or {}).get(method)
    if row and method != "SD":
        if res["editor"] != row["editor"]:
            out.append((f"editor {res['editor']}", f"--model configs/editor/ of {row['editor']}"))
        args = res.get("editor_args") or {}
        for k, v in (row.get("args") or {}).items():
            if args.get(k) != v:
                out.append((f"{k} {args.get(k)}", f"--model.init_args.{k} {v}"))
    return out


def check_run(spec: dict, name: str, res: dict, method: str | None = None, allow: bool = False) -> list[str]:
    """Refuse a run that is not of the table's benchmark, data or metric; refuse, or with ``allow`` return as labels,
    every deviation from the table's protocol (:func:`deviations`), so no number sits beside a paper's unmarked."""
    want = spec.get("expect") or {}
    proto = res["protocol"]
    where = res.get("_dir", "a run")
    if want.get("benchmark") and res["benchmark"] != want["benchmark"]:
        raise UsageError(f"{where} ran {res['benchmark']}, but table {name!r} reads {want['benchmark']} runs "
                         f"(configs/benchmark/{spec.get('config', '?')}.yaml)")
    if want.get("data") and res.get("_data") != want["data"]:
        raise UsageError(f"{where} ran data {res.get('_data')!r}, but table {name!r} needs {want['data']!r} "
                         f"(configs/benchmark/{spec.get('config', '?')}.yaml)")
    if want.get("protocol") and proto.get("protocol") not in (want["protocol"], "as_is"):
        raise UsageError(f"{where} ran protocol {proto.get('protocol')!r}, but table {name!r} needs {want['protocol']!r}")
    metric = spec["metric"].split("/")[0]
    if metric not in {m.get("name") for m in proto.get("metrics", [])}:
        raise UsageError(f"{where} has no metric {metric!r}, which table {name!r} reads: evaluate it with "
                         f"configs/benchmark/{spec.get('config', '?')}.yaml")
    found = deviations(spec, res, method or method_name(res))
    if found and not allow:
        raise UsageError(f"{where} departs from table {name!r}'s protocol: " + "; ".join(f"{lab} (fix: {fix})" for lab, fix in found)
                         + ". Rerun with the fixes, or pass --allow-deviations to print each deviation in its row")
    return [lab for lab, _ in found]


def _cell(ours, paper, scale: float, digits: int) -> str:
    o = "—" if ours is None else f"{ours * scale:.{digits}f}"
    if paper is None:
        return o
    d = "" if ours is None else f" ({ours * scale - paper:+.{digits}f})"
    return f"{o} / {paper:.{digits}f}{d}"


def _harmonic(vals: list[float | None], kinds: list[str]) -> float | None:
    """MACE's H: erased and paraphrase accuracies count as 1 - acc, kept as acc."""
    terms = []
    for v, k in zip(vals, kinds):
        if v is None:
            return None
        x = 1 - v if k in ("erased", "paraphrase") else v
        if x <= 0:
            return 0.0
        terms.append(1 / x)
    return len(terms) / sum(terms)


def _group_mean(metrics: dict, key: str, group: str, case: str | None) -> float | None:
    """The group's mean (of one case when given): a missing cell is ``None`` ("—"), never another selection's mean."""
    k = f"{key}/{group}/{case}" if case else f"{key}/{group}"
    return metrics[k]["mean"] if k in metrics else None


def _objects(spec: dict, rows: list[tuple[str, dict, dict]]) -> list[str]:
    cols, key, scale, digits = spec["columns"], spec["metric"], spec.get("scale", 1), spec.get("digits", 2)
    groups = [c for c in cols if c != "H"]
    out = ["| method | concept | " + " | ".join(spec["headers"]) + " |", "|---|---|" + "---|" * len(cols)]
    for method, label, metrics, res in rows:
        cases = res["protocol"].get("erase") or []
        published = (spec.get("values") or {}).get(method, {})
        per = []
        for case in cases:
            vals = [_group_mean(metrics, key, g, case if len(cases) > 1 else None) for g in groups]
            per.append(vals + ([_harmonic(vals, groups)] if "H" in cols else []))
            paper = published.get(case) or [None] * len(cols)
            out.append(f"| {label} | {case} | " + " | ".join(_cell(v, p, scale, digits) for v, p in zip(per[-1], paper)) + " |")
        if len(per) > 1:
            mean = [None if any(p[j] is None for p in per) else sum(p[j] for p in per) / len(per) for j in range(len(cols))]
            paper = published.get("mean") or [None] * len(cols)
            out.append(f"| {label} | **mean of {len(per)}** | " + " | ".join(_cell(v, p, scale, digits) for v, p in zip(mean, paper)) + " |")
    return out


def _counts(spec: dict, rows) -> list[str]:
    """Sums of per-image counts; a run on fewer prompts than the paper's (``--allow-deviations``) is printed as rates
    per 100 images, the paper's too, labelled, never as counts beside the paper's counts."""
    cols, key = spec["columns"], spec["metric"]
    full = (spec.get("expect") or {}).get("rows")
    out = ["| method | images | " + " | ".join(spec["headers"]) + " |", "|---|---|" + "---|" * len(cols)]
    for method, label, metrics, _ in rows:
        paper = (spec.get("values") or {}).get(method) or [None] * len(cols)
        vals = [metrics[f"{key}/{c}"]["sum"] if f"{key}/{c}" in metrics else None for c in cols]
        n = metrics[f"{key}/{cols[0]}"]["n"] if f"{key}/{cols[0]}" in metrics else None
        if full and n and n != full:  # a subset: rates, ours and the paper's
            vals = [None if v is None else 100 * v / n for v in vals]
            paper = [None if p is None else 100 * p / full for p in paper]
            out.append(f"| {label} | {n} (per 100 images) | " + " | ".join(_cell(v, p, 1, 1) for v, p in zip(vals, paper)) + " |")
            continue
        out.append(f"| {label} | {'—' if n is None else n} | " + " | ".join(_cell(v, p, 1, 0) for v, p in zip(vals, paper)) + " |")
    return out


def _artists(spec: dict, rows) -> list[str]:
    key, scale, digits = spec["metric"], spec.get("scale", 1), spec.get("digits", 2)
    out = ["| method | " + " | ".join(spec["headers"]) + " |", "|---|---|---|---|"]
    for method, label, metrics, _ in rows:
        paper = (spec.get("values") or {}).get(method) or [None] * 3
        e = metrics.get(f"{key}/erased")
        kept = [metrics[f"{key}/{g}"] for g in ("kept", "preserved", "holdout") if f"{key}/{g}" in metrics]
        n = sum(m["n"] for m in kept)
        s = sum(m["mean"] * m["n"] for m in kept) / n if n else None
        vals = [e["mean"] if e else None, s, (s - e["mean"]) if e and s is not None else None]
        out.append(f"| {label} | " + " | ".join(_cell(v, p, scale, digits) for v, p in zip(vals, paper)) + " |")
    return out


def _multi(spec: dict, rows) -> list[str]:
    """One row per method and number of erased concepts (MACE's celebrities: erase 1, 5, 10, 100 at once)."""
    cols, key, scale, digits = spec["columns"], spec["metric"], spec.get("scale", 1), spec.get("digits", 2)
    groups = [c for c in cols if c != "H"]
    out = ["| method | erased | " + " | ".join(spec["headers"]) + " |", "|---|---|" + "---|" * len(cols)]
    for method, label, metrics, res in sorted(rows, key=lambda r: len(r[3]["protocol"].get("erase") or [])):
        n = len(res["protocol"].get("erase") or [])
        vals = [_group_mean(metrics, key, g, None) for g in groups]
        vals += [_harmonic(vals, groups)] if "H" in cols else []
        paper = ((spec.get("values") or {}).get(method) or {}).get(n) or [None] * len(cols)
        out.append(f"| {label} | {n} | " + " | ".join(_cell(v, p, scale, digits) for v, p in zip(vals, paper)) + " |")
    return out


def _shares(spec: dict, rows) -> list[str]:
    """One row per method and concept: each attribute's share and the deviation from balance; then their mean."""
    key, attrs, digits = spec["metric"], spec["attributes"], spec.get("digits", 2)
    out = ["| method | concept | " + " | ".join(f"{a} (%)" for a in attrs) + " | deviation ↓ |", "|---|---|" + "---|" * (len(attrs) + 1)]
    for method, label, metrics, res in rows:
        concepts = res["protocol"].get("concepts") or {}
        single = len(concepts) == 1
        for case, concept in concepts.items():
            shares = [metrics.get(f"{key}/share/{a}" if single else f"{key}/share/{a}/prompts/{case}") for a in attrs]
            dev = metrics.get(f"{key}/deviation/{case}")
            out.append(f"| {label} | {concept} | " + " | ".join("—" if s is None else f"{100 * s['mean']:.{digits - 1}f}" for s in shares)
                       + f" | {'—' if dev is None else format(dev['mean'], f'.{digits}f')} |")
        dev = metrics.get(f"{key}/deviation")
        out.append(f"| {label} | **mean of {len(concepts)}** | " + " | ".join("" for _ in attrs)
                   + f" | {'—' if dev is None else format(dev['mean'], f'.{digits}f')} |")
    return out


def _attacks(spec: dict, rows) -> list[str]:
    """Attack success rates (ASR tables): each column one attack's rate (``[attack, asr_pre | asr | asr_union]``),
    one row per edited model; the unedited model is not attacked and has no row."""
    cols, scale, digits = spec["columns"], spec.get("scale", 1), spec.get("digits", 2)
    out = ["| method | attacked samples | " + " | ".join(spec["headers"]) + " |", "|---|---|" + "---|" * len(cols)]
    for method, label, _, res in rows:
        if method == "SD":
            continue
        rates = res.get("attacks") or {}
        vals = [((rates.get(a) or {}).get(rate) or {}).get("mean") for a, rate in cols]
        n = next((rates[a][rate]["n"] for a, rate in cols if a in rates and rate in rates[a]), None)
        paper = (spec.get("values") or {}).get(method) or [None] * len(cols)
        out.append(f"| {label} | {'—' if n is None else n} | " + " | ".join(_cell(v, p, scale, digits) for v, p in zip(vals, paper)) + " |")
    return out


LAYOUTS = {"attacks": _attacks, "objects": _objects, "counts": _counts, "artists": _artists, "multi": _multi, "shares": _shares}


def _label(method: str, res: dict, deviations: list[str]) -> str:
    """A row's name: the method, the model, the method's recipe where it has several, and every deviation."""
    parts = [model_label(res)] if not any(d == model_label(res) for d in deviations) else []
    parts += [r for r in ([] if method == "SD" else recipe(res)) if r not in deviations]
    return f"{method} ({', '.join(parts + deviations)})"


def render(name: str, runs: list[dict], path: str | None = None, allow_deviations: bool = False) -> str:
    """Table ``name`` of ``runs`` (loaded with :func:`edit_bench.report.load_run`) as markdown: each cell is ours,
    then the paper's and the difference where the paper printed the cell. Every run is checked against the table's
    protocol first (:func:`check_run`): a deviation is refused, or with ``allow_deviations`` named in its row."""
    specs = load_specs(path)
    if name not in specs:
        raise UsageError(f"unknown table {name!r}: use one of {', '.join(sorted(specs))}")
    spec = specs[name]
    rows, seen = [], set()
    for r in runs:
        m = method_name(r)
        devs = check_run(spec, name, r, m, allow_deviations)
        base_devs = check_run(spec, name, r, "SD", allow_deviations) if r.get("baseline") else []
        n = len(r["protocol"].get("erase") or []) if spec["layout"] == "multi" else 0  # one SD row per N
        if r.get("baseline") and ("SD", r["model_id"], n) not in seen:
            seen.add(("SD", r["model_id"], n))
            rows.append(("SD", _label("SD", r, base_devs), r["baseline"], r))
        if m == "SD" and ("SD", r["model_id"], n) in seen:
            continue
        seen.add((m, r["model_id"], n))
        rows.append((m, _label(m, r, devs), r["metrics"], r))
    src = spec["source"]
    head = [f"## {spec.get('title', name)}", "",
            f"Each cell: ours / {src['paper']}, {src['table']} ({src['model']}) and the difference, where the paper "
            "printed the cell; each row names its model, its recipe and every way its protocol departs from the "
            "paper's." if spec.get("values") else f"Ours ({src['paper']}).", ""]
    notes = [f"- {n}" for n in (spec.get("differences") or [])]
    return "\n".join(head + LAYOUTS[spec["layout"]](spec, rows) + ([""] + ["Protocol differences:"] + notes if notes else [])) + "\n"
