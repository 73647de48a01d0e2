"""Concept erasure tables: prompts that each name a concept (an object class, an artist, a person), grouped by
what the edit does to it, and scored by detectors and classifiers (``edit_bench.metrics.detectors``).

One benchmark class covers the erasure field's tables (``configs/benchmark/``): ESD's Imagenette table (500
"an image of a [class]" rows per class, each with its own seed, a ResNet-50), MACE's CIFAR-10 table (templates
and synonyms, zero-shot CLIP), MACE's artist and celebrity tables (many concepts erased at once, the others
kept), I2P nudity (unlabelled prompts, NudeNet) and the toy world's twins of each.

Groups:
    ``erased``: the prompts of an erased concept; ``paraphrase``: its synonyms (labelled with the concept);
    ``kept``: the prompts of every other concept; ``prompts``: rows without a concept (I2P).

Protocols:
    ``fixed`` (the multi-concept protocol: MACE's 1/5/10/100 celebrities, 100 artists): one edit erases every
    concept of ``erase`` at once; each concept is one case, scored on that model.
    ``per_case`` (one model per erased concept: ESD Table 2, MACE Table 1): every erased concept is a case whose
    edit erases it alone; the case scores that concept, its synonyms and every kept concept under its edit.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from ..errors import UsageError
from ..types import EditCase, EditRequest, PromptPair, Sample
from .base import Benchmark, read_csv, resolve_path
from .requests import EditRequests

GROUPS = ("erased", "paraphrase", "kept", "preserved", "holdout", "prompts")
ROLES = ("erased", "kept", "preserved", "holdout")


def _case_name(concept: str) -> str:
    return concept.replace("/", "_")  # a sample id is case/group/k/seed


_OPS = {">": float.__gt__, ">=": float.__ge__, "<": float.__lt__, "<=": float.__le__}


def _condition(column: str, spec) -> "callable":
    """A row test from ``where``'s ``"OP VALUE"`` (see :class:`ConceptPrompts`)."""
    import re

    m = re.fullmatch(r"\s*(>=|<=|==|!=|>|<|contains)\s*(.+?)\s*", str(spec))
    if not m:
        raise UsageError(f"where: {column}: {spec!r} is not 'OP VALUE' with OP one of > >= < <= == != contains "
                         "(e.g. '> 50')")
    op, value = m.groups()
    if op == "contains":
        return lambda cell: value in cell
    try:
        number = float(value)
    except ValueError:
        number = None
    if op in _OPS:
        if number is None:
            raise UsageError(f"where: {column}: {op} compares numbers; {value!r} is not one")
        return lambda cell: _OPS[op](float(cell), number)
    same = (lambda cell: float(cell) == number) if number is not None else (lambda cell: cell == value)
    return same if op == "==" else (lambda cell: not same(cell))


def _select(path, table: list[dict], where: dict) -> list[dict]:
    """The rows of ``table`` that pass every condition of ``where``; none passing is an error."""
    if not where:
        return table
    tests = {c: _condition(c, spec) for c, spec in where.items()}
    missing = [c for c in tests if c not in table[0]]
    if missing:
        raise UsageError(f"{path}: where names columns {missing} the file does not have")
    out = []
    for i, r in enumerate(table):
        try:
            if all(t(r[c]) for c, t in tests.items()):
                out.append(r)
        except ValueError:
            bad = next(c for c in tests if not _is_number(r[c]))
            raise UsageError(f"{path}: row {i + 2}: {bad} = {r[bad]!r} is not a number (where: {where[bad]!r})") from None
    if not out:
        raise UsageError(f"{path}: no row passes where {where}; loosen the conditions")
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


class ConceptPrompts(Benchmark):
    """Prompts naming concepts, erased or kept (see the module docstring).

    Args:
        path: a CSV with a ``prompt`` column, optionally ``evaluation_seed`` (one image per row with that seed, as
            ESD's, UCE's and MACE's scripts) and the concept column; without ``evaluation_seed`` every row is drawn
            with each of ``sampler.seeds``. ``None``: prompts from ``templates`` × ``concepts``.
        concept_column: the column naming each row's concept (``class``, ``artist``, ...); ``None``: the rows have no
            concept (I2P: group ``prompts``; give the edit with ``requests``).
        role_column: a column giving each row's role (UCE's multi-artist files: ``type`` = ``erased``, ``preserved``
            (kept, and in the edit's preserve set), ``holdout`` (kept, not preserved)); instead of ``erase``/``keep``.
        role_map: the column's values as roles where they differ (MACE's art CSV: ``{"0": erased, "1": kept}``).
        concept_templates: read each row's concept from its prompt instead of a column: the ``{}`` of the first
            template the prompt matches (MACE's celebrity CSVs name the person only in the prompt: "A portrait of {}",
            "An image capturing {} at a public event", ...); a row matching none is an error.
        concepts: the concepts, in order, when the prompts come from ``templates`` (no ``path``); with a ``path``,
            a subset of its concepts to use (default: all, in file order).
        templates: the prompts of each concept (and synonym) without a ``path``: ``"a photo of the {}"``.
        erase: the erased concepts: names, or ``N`` for the first N concepts (MACE's 1, 5, 10, 100).
        keep: the kept concepts (default: every concept not erased; under ``per_case``, every other concept of the
            set, erased by another case or not, as MACE scores the nine other classes with each model).
        paraphrases: synonyms of erased concepts, ``{concept: [synonym, ...]}`` or a JSON file of that mapping (MACE's
            ``10_objects_paraphrase.json``): each synonym through ``paraphrase_templates``, labelled with its concept.
        paraphrase_templates: the prompts of each synonym (default: ``templates``).
        erase_prompt: the source of each concept's request (``"{}"``: the name itself).
        anchor: the target of each request (``""``: the unconditional, as ESD/UCE/MACE erase; or an anchor such as
            ``"art"``, ``"a photo of an object"``); ``{}`` is the concept.
        preserve: prompts an editor with a preserve term keeps (UCE); ``{kept}`` / ``{preserved}``: the concepts of
            that role (every non-erased one / the role column's ``preserved``) through ``erase_prompt``.
        requests: a requests file (YAML/CSV) as the edit instead (I2P: "nudity" → ""); fixed protocol only.
        where: keep the file's rows whose columns pass every condition, ``{column: "OP VALUE"}`` with OP one of
            ``> >= < <= == !=`` (numbers; ``==``/``!=`` also text) or ``contains`` (text): Ring-A-Bell's nudity set is
            I2P's rows with ``{nudity_percentage: "> 50"}`` (95 of 4,703). Applied before ``n``.
        n: the first ``n`` rows of the file (a quick run); ``None`` = all.
        empty_prompts: draw rows whose prompt is empty (an unconditional image) instead of refusing the file. I2P's
            row 2260 is empty; the papers' scripts draw it, and ``i2p_nudity.yaml`` does too.
        **kwargs: sampler, judge, protocol (``fixed``, ``per_case`` or ``sequential``: the erased concepts one after
            another, the kept ones scored at every stage), batch_size, baseline, metrics.
    """

    groups = GROUPS
    attacked_groups = ("erased", "prompts")  # an erased concept's prompts; an unlabelled set's (I2P) rows
    absent_groups = ("erased", "prompts")

    def __init__(self, path: str | None = None, concept_column: str | None = None, role_column: str | None = None,
                 role_map: dict[str, str] | None = None, concept_templates: list[str] | None = None,
                 concepts: list[str] | None = None,
                 templates: list[str] | None = None, erase: list[str] | int | None = None, keep: list[str] | None = None,
                 paraphrases: dict[str, list[str]] | str | None = None, erase_prompt: str = "{}", anchor: str = "",
                 paraphrase_templates: list[str] | None = None, preserve: list[str] | None = None,
                 requests: str | None = None, n: int | None = None, empty_prompts: bool = False,
                 where: dict[str, str] | None = None, protocol: str = "fixed", **kwargs):
        if kwargs.get("metrics") is None:
            from ..metrics import ClipScore
            from ..metrics.detectors import ClipAccuracy

            kwargs["metrics"] = [ClipAccuracy(), ClipScore()] if (concept_column or path is None) else [ClipScore()]
        super().__init__(protocol=protocol, **kwargs)
        self.path, self.concept_column, self.erase_prompt, self.anchor = path, concept_column, erase_prompt, anchor
        self.requests_path = requests
        if n is not None and n < 1:
            raise UsageError(f"n must be >= 1 (or null for every row), got {n}")
        if "{}" not in erase_prompt:
            raise UsageError(f"erase_prompt {erase_prompt!r} has no '{{}}' for the concept")
        self._roles: dict[str, str] = {}
        self.empty_prompts, self.role_map = empty_prompts, dict(role_map or {})
        self._patterns = self._compile(concept_templates)
        self.where = dict(where or {})
        if self.where and path is None:
            raise UsageError("where selects rows of a prompt file: give path, or leave where out")
        if concept_templates and concept_column:
            raise UsageError("give the concept by concept_column or by concept_templates, not both")
        self.concept_column = concept_column = concept_column or ("_concept" if concept_templates else None)
        self._rows = self._read(path, concept_column, role_column, concepts, templates, n)  # [(prompt, concept, seed)]
        file_concepts = list(dict.fromkeys(c for _, c, _ in self._rows if c is not None))
        if concepts is not None and path is not None:
            unknown = [c for c in concepts if c not in file_concepts]
            if unknown:
                raise UsageError(f"{path}: concepts {unknown[:5]} have no rows (its {concept_column!r} values: "
                                 f"{file_concepts[:8]}...)")
            self._rows = [r for r in self._rows if r[1] in concepts]
            file_concepts = [c for c in file_concepts if c in concepts]
        self._concepts = file_concepts
        if self._roles:
            if erase is not None or keep is not None:
                raise UsageError(f"{role_column!r} gives the roles: leave out erase and keep")
            erase = [c for c in file_concepts if self._roles[c] == "erased"]
            keep = [c for c in file_concepts if self._roles[c] != "erased"]
        self._erase = self._erased(erase)
        self._keep, self._keep_given = self._kept(keep), keep is not None
        self._roles = {c: self._roles.get(c, "erased" if c in self._erase else "kept") for c in self._concepts}
        self._paraphrases = self._synonyms(paraphrases, paraphrase_templates or templates)
        self._edit = EditRequests(requests) if requests else None
        if self._edit is not None and protocol != "fixed":
            raise UsageError("a requests file is one edit of the whole set: use protocol fixed with requests, or "
                             "per_case / sequential with erase (one edit per concept)")
        if protocol in ("per_case", "sequential") and not self._erase:
            raise UsageError(f"protocol {protocol} makes one edit per erased concept: list them with erase")
        self._preserve_spec = list(preserve or [])
        if self.attacks and self._edit is not None and len(self._edit.requests()) != 1:
            raise UsageError(f"attacks undo one erasure, but {requests} holds {len(self._edit.requests())} requests: "
                             "attack a requests file with one request (I2P: nudity)")
        self._cases  # parse now: a bad setting fails before any output exists

    # -- reading
    def _read(self, path, column, role_column, concepts, templates, n):
        if path is None:
            if not concepts or not templates:
                raise UsageError("ConceptPrompts needs a prompt CSV (path) or concepts and templates to build prompts from")
            bad = [t for t in templates if "{}" not in t]
            if bad:
                raise UsageError(f"templates {bad} have no '{{}}' for the concept")
            rows = [(t.format(c), c, None) for c in concepts for t in templates]
        else:
            if role_column and not column:
                raise UsageError("role_column gives each concept's role: name the concept column too (concept_column)")
            required = ["prompt"] + ([column] if column and column != "_concept" else []) + ([role_column] if role_column else [])
            if self.empty_prompts or self.where:  # empty prompts are refused after the selection (unless drawn)
                import csv

                with open(resolve_path(path), newline="", encoding="utf-8") as f:
                    if "prompt" not in (csv.DictReader(f).fieldnames or []):
                        raise UsageError(f"{path}: needs a 'prompt' column")
                required.remove("prompt")
            table = read_csv(path, required, optional=("evaluation_seed", "prompt", *self.where))
            table = _select(path, table, self.where)
            table = [{**r, "prompt": r.get("prompt", "")} for r in table]
            empty = [i for i, r in enumerate(table) if not r["prompt"]]
            if empty and not self.empty_prompts:
                raise UsageError(f"{path}: {len(empty)} selected row(s) have an empty prompt; remove them, or draw them "
                                 "unconditionally with empty_prompts: true")
            if self._patterns:
                table = [{**r, "_concept": self._concept_of(path, i, r["prompt"])} for i, r in enumerate(table)]
            for i, r in enumerate(table):
                role = r[role_column] if role_column else None
                if role is None:
                    continue
                role = self.role_map.get(role, role)
                if role not in ROLES:
                    raise UsageError(f"{path}: row {i + 1}: role {role!r} in column {role_column!r}; use one of {ROLES}, "
                                     "or map the file's values with role_map")
                if self._roles.setdefault(r[column], role) != role:
                    raise UsageError(f"{path}: row {i + 1}: concept {r[column]!r} has roles {self._roles[r[column]]!r} "
                                     f"and {role!r}; a concept has one role")
            try:
                rows = [(r["prompt"], r[column] if column else None,
                         int(r["evaluation_seed"]) if r.get("evaluation_seed") else None) for r in table]
            except ValueError as e:
                raise UsageError(f"{path}: evaluation_seed must be an integer ({e})") from None
        return rows[:n] if n else rows

    @staticmethod
    def _compile(templates):
        import re

        if not templates:
            return []
        bad = [t for t in templates if t.count("{}") != 1]
        if bad:
            raise UsageError(f"concept_templates {bad} need exactly one '{{}}' for the concept")
        return [re.compile("^" + re.escape(t).replace(r"\{\}", "(.+?)") + "$") for t in templates]

    def _concept_of(self, path, i, prompt: str) -> str:
        for pat in self._patterns:
            m = pat.match(prompt)
            if m:
                return m.group(1)
        raise UsageError(f"{path}: row {i + 1} ({prompt!r}) matches none of concept_templates: add its template")

    def _erased(self, erase) -> list[str]:
        if erase is None:
            return []
        if isinstance(erase, int):
            if not 1 <= erase <= len(self._concepts):
                raise UsageError(f"erase={erase}: the set has {len(self._concepts)} concepts; erase 1..{len(self._concepts)}")
            return self._concepts[:erase]
        unknown = [c for c in erase if c not in self._concepts]
        if unknown:
            raise UsageError(f"erase: {unknown[:5]} are not concepts of this set (its concepts: {self._concepts[:8]}...)")
        return list(dict.fromkeys(erase))

    def _kept(self, keep) -> list[str]:
        if keep is None:
            return [c for c in self._concepts if c not in self._erase]
        unknown = [c for c in keep if c not in self._concepts]
        both = [c for c in keep if c in self._erase]
        if unknown or both:
            raise UsageError(f"keep: {unknown[:5]} are not concepts of this set" if unknown else
                             f"keep: {both[:5]} are also erased; a concept is erased or kept")
        return list(dict.fromkeys(keep))

    def _synonyms(self, paraphrases, templates) -> dict[str, list[str]]:
        if paraphrases is None:
            return {}
        if isinstance(paraphrases, str):
            try:
                paraphrases = json.loads(resolve_path(paraphrases).read_text())
            except json.JSONDecodeError as e:
                raise UsageError(f"{paraphrases}: not JSON ({e}); expected {{concept: [synonym, ...]}}") from None
        if not isinstance(paraphrases, dict) or not all(isinstance(v, list) for v in paraphrases.values()):
            raise UsageError("paraphrases: expected a mapping {concept: [synonym, ...]}")
        if not templates:
            raise UsageError("paraphrases are drawn through templates: give templates or paraphrase_templates "
                             "(e.g. ['a photo of the {}'])")
        bad = [t for t in templates if "{}" not in t]
        if bad:
            raise UsageError(f"paraphrase templates {bad} have no '{{}}' for the synonym")
        unknown = [c for c in paraphrases if c not in self._concepts]
        if unknown:
            raise UsageError(f"paraphrases name {unknown[:5]}, which are not concepts of this set")
        self._templates = list(templates)
        return {c: list(v) for c, v in paraphrases.items() if c in self._erase}

    # -- cases
    def concepts(self) -> list[str]:
        """The labelled concepts, in order (the default candidates of a zero-shot classifier)."""
        return list(self._concepts)

    def _request(self, concept: str) -> EditRequest:
        return EditRequest(self.erase_prompt.format(concept), self.anchor.format(concept))

    def _rows_of(self, concepts) -> list[tuple[PromptPair, int | None]]:
        keep = set(concepts)
        return [(PromptPair(p, c), s) for p, c, s in self._rows if c in keep]

    def _para(self, concept: str) -> list[tuple[PromptPair, int | None]]:
        return [(PromptPair(t.format(s), concept), None) for s in self._paraphrases.get(concept, ()) for t in self._templates]

    @functools.cached_property
    def _layout(self) -> list[tuple[str, EditRequest | None, dict, tuple]]:
        """``(case id, request, {group: [(pair, own seed or None)]}, preserve)`` of every case, in order."""
        stem = Path(self.path).stem if self.path else "concepts"
        if self.concept_column is None and self.path is not None:  # unlabelled rows: one case, the edit is the file's
            rows = [(PromptPair(p), s) for p, _, s in self._rows]
            attacked = {f"attack:{a.name}": rows for a in self.attacks} if self._edit is not None else {}
            if self.absent is not None and self._edit is not None:
                attacked["absent:prompts"] = self._absent_rows(stem, rows)
            return [(stem, None, {"prompts": rows, **attacked}, ())]
        out = []
        for c in self._erase:
            groups = {"erased": self._rows_of([c]), "paraphrase": self._para(c)}
            own = [p.prompt for p, _ in groups["erased"] + groups["paraphrase"]]
            made = self.paraphrased([p for p, _ in groups["erased"]], self._request(c), own)
            groups.update({g: [(p, None) for p in pairs] for g, pairs in made.items()})
            if self.protocol == "per_case":  # kept: the set's other concepts (keep: when given)
                groups["kept"] = self._rows_of(self._keep if self._keep_given else [k for k in self._concepts if k != c])
            request = None if self._edit else self._request(c)
            if request is not None or self._edit is not None:
                groups.update({f"attack:{a.name}": groups["erased"] for a in self.attacks})
                if self.absent is not None and groups["erased"]:
                    groups["absent:erased"] = self._absent_rows(_case_name(c), groups["erased"])
            out.append((_case_name(c), request, {g: v for g, v in groups.items() if v}, self.preserve_for(c)))
        if self.protocol != "per_case":
            out += [(_case_name(c), None, {self._roles[c]: self._rows_of([c])}, ()) for c in self._keep]
        return out

    def cases(self):
        return [EditCase(cid, req, {g: tuple(p for p, _ in v) for g, v in groups.items()}, pres)
                for cid, req, groups, pres in self._layout]

    def _absent_rows(self, case_id: str, rows: list) -> list:
        """The concept-absent twins of ``rows`` (each with its own seed), see ``Benchmark(absent=...)``."""
        case = EditCase(case_id, None, {})
        return [(self._absent_pair(case, pair), seed) for pair, seed in rows]

    def attack_request(self, case):
        """A case's request; without one (the edit is a requests file: I2P), the file's one request (nudity)."""
        if case.request is None and self._edit is not None:
            return self._edit.requests()[0]
        return case.request

    def preserve_for(self, concept: str) -> tuple[str, ...]:
        out = []
        for p in self._preserve_spec:
            if p == "{kept}":
                out += [self.erase_prompt.format(k) for k in self._keep]
            elif p == "{preserved}":
                out += [self.erase_prompt.format(k) for k in self._keep if self._roles[k] == "preserved"]
            else:
                out.append(p)
        return tuple(dict.fromkeys(out))

    def samples(self) -> list[Sample]:
        """Each row once with its own seed (``evaluation_seed``), else with each of the sampler's seeds."""
        out = []
        for cid, _, groups, _ in self._layout:
            for group, rows in groups.items():
                for k, (pair, seed) in enumerate(rows):
                    out += [Sample(cid, group, k, s, pair) for s in ([seed] if seed is not None else self.sampler.seeds)]
        return out

    def requests(self) -> list[EditRequest]:
        if self._edit is not None:
            return self._edit.requests()
        return [c.request for c in self._cases.values() if c.request is not None]

    def preserve(self) -> list[str]:
        if self._edit is not None:
            return self._edit.preserve()
        return sorted({p for c in self._cases.values() for p in c.preserve})

    def protocol_info(self) -> dict:
        info = super().protocol_info()
        own = any(s is not None for _, _, s in self._rows)
        info.update(
            seeding=("one image per row with its evaluation_seed" if own else f"every prompt with each of {list(self.sampler.seeds)}"),
            seeds=sorted({s for _, _, s in self._rows if s is not None}) if own else list(self.sampler.seeds),
            rows=len(self._rows), where=self.where or None, concepts=len(self._concepts), erase=self._erase, keep=self._keep,
            paraphrases=self._paraphrases, requests=self.requests_path or [r.__dict__ for r in self.requests()],
            guidance_note="the sampler's guidance for every row (a CSV's evaluation_guidance is not used)",
        )
        return info
