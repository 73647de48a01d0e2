"""Data modules: what to edit (``EditData``) and how edits are measured (``Benchmark``)."""

from __future__ import annotations

import dataclasses
import functools
from typing import ClassVar, Literal

import lightning as L
from torch.utils.data import DataLoader, Dataset

from ..attacks import Attack
from ..metrics import ClipScore, EditScores, JudgeConfig, SampleMetric
from ..metrics.base import MetricSet
from ..types import EditCase, EditRequest, Sample, SamplerConfig, without_words
from ..errors import UsageError
from ..io import REPO_ROOT, read_csv, resolve_path  # noqa: F401  (the data modules' readers, named here too)

MADE_GROUPS = ("paraphrase:", "attack:", "absent:")  # groups a benchmark option adds to any benchmark's cases


def absent_rule(absent) -> dict | None:
    """The concept-absent rule of ``Benchmark(absent=...)`` in its recorded form, or a usage error."""
    if absent is None:
        return None
    if absent == "new":
        return {"rule": "new"}
    if isinstance(absent, dict) and set(absent) == {"remove"} and isinstance(absent["remove"], (list, tuple)) \
            and absent["remove"] and all(isinstance(w, str) and w.strip() for w in absent["remove"]):
        return {"rule": "remove", "remove": [w.strip() for w in absent["remove"]]}
    raise UsageError(f"absent {absent!r}: give 'new' (each prompt's new label: 'a circle by Pell' -> 'a circle') or "
                     "{remove: [words]} (the words taken out of each prompt: 'a nude woman' -> 'a woman')")


def row_request(path, i: int, source: str, target: str) -> EditRequest:
    """The request of data row ``i``; a bad one is a usage error naming the file and line."""
    try:
        return EditRequest(source, target)
    except ValueError as e:
        raise UsageError(f"{path}: row {i} (line {i + 2}): {e}") from None


def select_rows(n: int, rows: str | None) -> list[int]:
    """Row indices from a selection: ``None`` = all, ``"0:10"`` = a slice, ``"3,5,9"`` = a list."""
    if rows is None or str(rows).strip() == "":
        return list(range(n))
    s = str(rows).strip()
    try:
        if ":" in s:
            return list(range(n))[slice(*[int(x) if x else None for x in s.split(":")])]
        idx = [int(x) for x in s.split(",")]
    except ValueError:
        raise UsageError(f"rows={rows!r}: use a slice like '0:10' or a list like '3,5,9'") from None
    bad = [i for i in idx if not 0 <= i < n]
    if bad:
        raise UsageError(f"rows {bad} out of range: the file has {n} rows (0..{n - 1})")
    return idx


class EditData(L.LightningDataModule):
    """Anything that yields edit requests (for ``fit``)."""

    truncate_long_prompts: bool = False

    def __init__(self):
        super().__init__()
        self.truncated: list[str] = []

    def requests(self) -> list[EditRequest]:
        raise NotImplementedError  # abstract

    def preserve(self) -> list[str]:
        return []

    def prompts(self) -> list[str]:
        """Every prompt this data feeds the text encoder."""
        out = [t for r in self.requests() for t in (r.source, r.target)] + list(self.preserve())
        return list(dict.fromkeys(out))

    def check_prompts(self, t2i, derived: list[str] = ()) -> None:
        """Fail (or truncate, with ``truncate_long_prompts``) on prompts longer than the text encoder's
        context (77 tokens on SD-1/2/XL). ``derived`` are the prompts an editor builds from the requests
        (prefixes, templates): they are checked too, and only ever fail (an editor's own prompt is not
        truncated behind the user's back)."""
        limit = t2i.max_length
        long = [(p, n) for p in self.prompts() if (n := t2i.n_tokens(p)) > limit]
        too_long = [(p, n) for p in dict.fromkeys(derived) if (n := t2i.n_tokens(p)) > limit]
        if too_long:
            listing = "; ".join(f"{p!r} ({n} tokens)" for p, n in too_long[:5]) + (" ..." if len(too_long) > 5 else "")
            raise UsageError(
                f"{len(too_long)} prompt(s) the editor builds from the requests (prefixes, templates) exceed the text "
                f"encoder's {limit} tokens: {listing}. Shorten the requests, or give the editor shorter templates"
            )
        if not long:
            return
        listing = "; ".join(f"{p!r} ({n} tokens)" for p, n in long[:5]) + (" ..." if len(long) > 5 else "")
        if not self.truncate_long_prompts:
            raise UsageError(
                f"{len(long)} prompt(s) exceed the text encoder's {limit} tokens: {listing}. Shorten them, or set "
                f"--data.init_args.truncate_long_prompts true to truncate them to {limit} tokens as SD pipelines do"
            )
        self.truncated = [p for p, _ in long]
        print(f"edit_bench: truncated {len(long)} prompt(s) to {limit} tokens: {listing}")

    def train_dataloader(self):
        """For editors that train (``Editor.trains``): every step sees all requests and the preserve set, as
        one batch ``{"requests": [...], "preserve": [...]}``; ``--trainer.max_steps`` sets the steps.

        One epoch is the whole run (``max_steps`` × ``accumulate_grad_batches`` batches on every process), so
        that gradient accumulation is never cut short by an epoch's end; the editor draws its own samples."""
        requests, preserve = self.requests(), self.preserve()
        trainer = self.trainer
        n = 1
        if trainer is not None and trainer.max_steps > 0:
            n = trainer.max_steps * trainer.accumulate_grad_batches * trainer.world_size  # split over ranks
        return DataLoader(_Repeat(n), batch_size=1, collate_fn=lambda _: {"requests": requests, "preserve": preserve})


class _Repeat(Dataset):
    """``n`` placeholder items: the batches of a training run carry the requests, not data."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return i


class Benchmark(EditData):
    """A benchmark: cases, the sampler and metrics that measure them, and the protocol.

    Class attributes:
        groups: the sample groups this benchmark's cases may hold (TIMED's efficacy, generality and specificity;
            a caption set's ``captions``), in report order.

    Args:
        sampler: generation settings (scheduler, steps, guidance, size, seeds).
        judge: the CLIP judge of the default metric (and of any ``EditScores`` without a judge of its own).
        protocol: ``per_case`` (reset the weights and edit for every case, as TIMED/RoAD), ``fixed`` (one edit with
            all requests, then evaluate every case on it) or ``sequential`` (the cases' requests one after another on
            the same weights, each editor's own update on the already edited model; after every ``every``-th edit
            the cases edited so far are scored, so the results hold a curve against the number of edits).
        every: under ``sequential``, score after every ``every``-th edit (and after the last).
        paraphrase: rules that make paraphrase and typo groups ``paraphrase:<rule>`` from the prompts that name each
            case's concept (``synonyms``, ``translations``, ``typos``, ``word_order``, ``toy_grammar``; see
            :mod:`edit_bench.benchmarks.paraphrase`), scored with the labels of the prompt each came from.
        paraphrase_words: the synonym and translation lists of those rules.
        attacks: attacks run against the edited model of every case with a request before its images are drawn
            (:mod:`edit_bench.attacks`, by ``class_path``): each adds the group ``attack:<name>`` (the case's efficacy
            prompts, or its ``attacked_groups``' prompts, under what the attack found), and ``results.json`` its
            success rates.
        absent: the concept-absent reference (IGMU, ACM CCS 2025): ``new`` (each prompt's new label: "a circle by
            Pell" -> "a circle") or ``{remove: [words]}`` ("a nude woman on a beach" -> "a woman on a beach"); adds
            the group ``absent:<group>`` for each of ``absent_groups`` (TIMED: efficacy and generality; a concept
            table: the erased rows), its prompts rewritten, same index and seeds, against which metrics with
            ``against: absent`` score each image of the group it was made from (LPIPS, SSIM,
            ``JudgeDistance``, ``ClipScoreDifference``): the unedited model's image of the rewritten prompt is what
            an ideal erasure draws.
        attack_judge: the name of the metric that decides an attack's success (its ``concept_present`` rule: the TIMED
            judge, NudeNet, a classifier's or CLIP zero-shot top-1); ``None``: the one metric of the benchmark that can
            judge it (the TIMED scores where present).
        batch_size: samples per generation batch (a batch never spans two cases under ``per_case``).
        truncate_long_prompts: prompts over 77 tokens are an error unless this is true, when they are
            truncated to 77 tokens (as Stable Diffusion's pipelines do) and listed in the results.
        baseline: also score the unedited model on the same samples, so results and the printed table
            show baseline and edited side by side.
        metrics: the metrics (``SampleMetric`` subclasses, by ``class_path``); default: the judge's TIMED
            scores and the CLIP-score of every image against its prompt with the same judge,
            ``[EditScores, ClipScore]``. Paired distances to the baseline (``LPIPS``; on the toy world
            ``JudgeDistance``, ``SSIM``) and ``FID`` are listed by the configs that want them.
    """

    groups: ClassVar[tuple[str, ...]] = ("efficacy", "generality", "specificity")
    # the groups an attack attacks (the first a case holds): the prompts that name the edited concept
    attacked_groups: ClassVar[tuple[str, ...]] = ("efficacy",)
    # the groups whose prompts get a concept-absent twin (``absent``): every prompt that names the edited concept
    absent_groups: ClassVar[tuple[str, ...]] = ("efficacy", "generality")

    def __init__(self, sampler: SamplerConfig = SamplerConfig(), judge: JudgeConfig = JudgeConfig(),
                 protocol: Literal["per_case", "fixed", "sequential"] = "per_case", batch_size: int = 8,
                 truncate_long_prompts: bool = False, baseline: bool = False,
                 metrics: list[SampleMetric] | None = None, every: int = 1, paraphrase: list[str] | None = None,
                 paraphrase_words: str = "datasets/paraphrase/words.json", attacks: list[Attack] | None = None,
                 attack_judge: str | None = None, absent: str | dict | None = None):
        super().__init__()
        self.save_hyperparameters(ignore=["metrics", "attacks"])  # the fingerprint records these by their descriptions
        self.baseline = baseline
        if protocol not in ("per_case", "fixed", "sequential"):
            raise UsageError(f"protocol must be 'per_case', 'fixed' or 'sequential', got {protocol!r}")
        if every < 1:
            raise UsageError(f"every must be >= 1 (score after every N-th sequential edit), got {every}")
        self.every = every
        from .paraphrase import check_rules

        self.paraphrase, self.paraphrase_words = check_rules(paraphrase), paraphrase_words
        self.attacks = list(attacks or [])
        names = [a.name for a in self.attacks]
        if len(set(names)) != len(names):
            raise UsageError(f"two attacks share a name ({names}): give each its own name")
        if batch_size < 1:
            raise UsageError(f"batch_size must be >= 1, got {batch_size}")
        self.sampler = sampler
        self.judge_cfg = judge
        self.protocol = protocol
        self.batch_size = batch_size
        self.truncate_long_prompts = truncate_long_prompts
        metrics = list(metrics) if metrics is not None else [EditScores(), ClipScore()]
        if not metrics:
            raise UsageError("metrics is empty: list at least one metric, or leave it out for the judge's TIMED scores")
        self.metrics = MetricSet(metrics)  # unique names and record keys, checked here
        self.attack_judge = self._attack_judge(attack_judge) if self.attacks else None
        self.absent = absent_rule(absent)

    def _attack_judge(self, name: str | None):
        """The metric that decides an attack's success (see ``attack_judge``), or a usage error naming the choices."""
        able = [m for m in self.metrics if m.concept_present() is not None]
        names = [m.name for m in able]
        if name is not None:
            chosen = next((m for m in self.metrics if m.name == name), None)
            if chosen is None:
                raise UsageError(f"attack_judge {name!r} is not a metric of this benchmark (its metrics: "
                                 f"{[m.name for m in self.metrics]}): name one of {names} or add that metric")
            if chosen.concept_present() is None:
                raise UsageError(f"attack_judge {name!r} ({type(chosen).__name__}) cannot tell whether an image shows "
                                 f"the erased concept: name one of {names or 'EditScores, NudeNet, ImageClassifier, ClipAccuracy'}")
            return chosen
        timed = [m for m in able if isinstance(m, EditScores)]
        if len(timed) == 1 or len(able) == 1:
            return (timed or able)[0]
        if not able:
            raise UsageError("attacks need a judge of success: add a metric that can tell whether an image shows the "
                             "erased concept (EditScores, NudeNet, ImageClassifier, ClipAccuracy)")
        raise UsageError(f"attacks: metrics {names} can each judge success; name one with --data.init_args.attack_judge")

    def attacked_group(self, case: EditCase) -> str | None:
        """The group of ``case`` an attack attacks (the first of ``attacked_groups`` it holds), ``None`` for none."""
        return next((g for g in self.attacked_groups if case.groups.get(g)), None)

    def attack_request(self, case: EditCase) -> EditRequest | None:
        """The erasure an attack tries to undo on ``case``: its request."""
        return case.request

    # -- cases
    def cases(self) -> list[EditCase]:
        raise NotImplementedError  # abstract

    @functools.cached_property
    def _cases(self) -> dict[str, EditCase]:
        out = {}
        for c in self.cases():
            if c.id in out:
                raise UsageError(f"duplicate case id {c.id!r}")
            c = self._with_made_groups(c)
            unknown = sorted(g for g in set(c.groups) - set(self.groups) if not g.startswith(MADE_GROUPS))
            if unknown:
                raise UsageError(f"case {c.id!r} has group(s) {unknown} that {type(self).__name__} does not declare "
                                 f"(its groups: {', '.join(self.groups)})")
            out[c.id] = c
        if not out:
            raise UsageError(f"{type(self).__name__} selects no cases: check --data.rows and the data file")
        return out

    def paraphrased(self, pairs, request: EditRequest, own) -> dict:
        """The rule-made paraphrase groups of ``pairs`` (the prompts naming ``request``'s concept); ``own``: the case's
        prompts, never repeated. ``{}`` without ``paraphrase`` rules."""
        if not self.paraphrase:
            return {}
        from .paraphrase import paraphrase_groups

        return paraphrase_groups(pairs, request, self.paraphrase, self.paraphrase_words, {p.lower() for p in own})

    def _with_made_groups(self, case: EditCase) -> EditCase:
        """The case with its rule-made paraphrase groups (of its efficacy prompts) and one group per attack (its
        attacked group's prompts)."""
        own = [p.prompt for pairs in case.groups.values() for p in pairs]
        made = self.paraphrased(case.groups["efficacy"], case.request, own) \
            if case.request is not None and "efficacy" in case.groups else {}
        attacked = self.attacked_group(case)
        if self.attacks and attacked is not None and self.attack_request(case) is not None:
            made.update({f"attack:{a.name}": case.groups[attacked] for a in self.attacks})
        if self.absent is not None and self.attack_request(case) is not None:
            made.update({f"absent:{g}": [self._absent_pair(case, p) for p in case.groups[g]]
                         for g in self.absent_groups if case.groups.get(g)})
        return dataclasses.replace(case, groups={**case.groups, **made}) if made else case

    def _absent_pair(self, case: EditCase, pair):
        """The concept-absent twin of ``pair`` (see ``absent``): the rewritten prompt, with the pair's labels."""
        if self.absent["rule"] == "new":
            if pair.new is None:
                raise UsageError(f"absent: new takes each prompt's new label, but case {case.id!r} prompt {pair.prompt!r} "
                                 "has none: give absent: {remove: [the concept's words]}")
            return dataclasses.replace(pair, prompt=pair.new)
        return dataclasses.replace(pair, prompt=without_words(pair.prompt, self.absent["remove"]))

    def absent_twin(self, sample: Sample) -> str | None:
        """The id of ``sample``'s concept-absent twin (same case, index and seed in ``absent:<group>``), ``None``
        where it has none."""
        if self.absent is None or sample.group.startswith(MADE_GROUPS):
            return None
        group = f"absent:{sample.group}"
        return f"{sample.case_id}/{group}/{sample.prompt_index}/{sample.seed}" \
            if self._cases[sample.case_id].groups.get(group) else None

    def case(self, case_id: str) -> EditCase:
        return self._cases[case_id]

    def requests(self) -> list[EditRequest]:
        return [c.request for c in self._cases.values() if c.request is not None]

    def preserve(self) -> list[str]:
        return sorted({p for c in self._cases.values() for p in c.preserve})

    def samples(self) -> list[Sample]:
        """Every sample, in case order (then group, prompt, seed)."""
        return [s for c in self._cases.values() for s in c.samples(self.sampler.seeds)]

    def prompts(self) -> list[str]:
        """Every prompt the benchmark will feed the text encoder (requests and samples)."""
        out = []
        for c in self._cases.values():
            out += ([c.request.source, c.request.target] if c.request else []) + list(c.preserve)
            out += [p.prompt for pairs in c.groups.values() for p in pairs]
        return list(dict.fromkeys(out))

    def protocol_info(self) -> dict:
        s = self.sampler
        return {"sampler": {"scheduler": s.scheduler, "steps": s.steps, "guidance": s.guidance, "size": s.size,
                            "eta": s.eta, "noise": "torch.Generator('cpu').manual_seed(seed) per sample"},
                "seeds": list(s.seeds), "protocol": self.protocol, "cases": len(self._cases),
                **({"every": self.every} if self.protocol == "sequential" else {}),
                **({"paraphrase": {"rules": self.paraphrase, "words": self.paraphrase_words}} if self.paraphrase else {}),
                **({"attacks": [a.describe() for a in self.attacks],
                    "attack_judge": {"metric": self.attack_judge.name, "class": type(self.attack_judge).__name__,
                                     "key": (r := self.attack_judge.concept_present()).key, "rule": r.rule}}
                   if self.attacks else {}),
                **({"absent": self.absent} if self.absent is not None else {}),
                "truncated_prompts": self.truncated}
