"""Attacks as a stage of an evaluation: where what an attack found on a case's model is kept, the attack run (or read
back) on a case's model as it is now, the checks of a benchmark's attacks before anything is written, and each attack's
rates from a run's stored records. The evaluation's prediction pass calls :func:`find` for an attacked group's first
batch; :mod:`edit_bench.evaluate` calls the rest."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from ..errors import UsageError
from ..metrics import EditScores
from ..io import image_files
from .base import AdversarialPrompts, attack_rates, concept_images


def attack_path(run, variant: str, attack: str, case_id: str) -> Path:
    """Where what ``attack`` found on ``case_id``'s model of record set ``variant`` is kept."""
    return run.path / "attacks" / variant / attack / (case_id.replace("/", "_").replace(":", "_") + ".safetensors")


def find(attack, editor, bench, case, sampler, path: Path, batch_size: int = 8) -> AdversarialPrompts:
    """What ``attack`` finds on ``case``'s model as it is now: read back from ``path`` when a previous batch or run stored
    it, else attacked now (the concept images, where the attack uses them, drawn by the editor's origin) and stored.
    The attacked prompts are the case's :meth:`~edit_bench.benchmarks.Benchmark.attacked_group`; an attack that keeps
    the judge in the loop gets :func:`judge_in_loop`."""
    if path.exists():
        return AdversarialPrompts.load(path)
    case = dataclasses.replace(case, request=bench.attack_request(case))
    pairs = case.groups[bench.attacked_group(case)]
    prompts = [p.prompt for p in pairs]
    images = None
    if attack.uses_images:
        images = concept_images(editor.t2i, editor, prompts, sampler, attack.image_seeds, attack.images,
                                case.request.source, batch_size)
    judge = judge_in_loop(editor.t2i, bench, case, sampler) if getattr(attack, "judge_in_loop", False) else None
    found = attack.run(editor.t2i, case, prompts, images, editor, judge)
    found.save(path)
    return found


def judge_in_loop(t2i, bench, case, sampler):
    """``judge(ids [77], k) -> bool``: the image of the attacked group's prompt ``k`` drawn on the model as it is now
    from the token ids ``ids``, with that prompt's first seed (its own seed where the benchmark gives each row one),
    judged by the benchmark's attack judge: is the erased concept in it? (UnlearnDiffAtk's classifier in the loop.)"""
    group = bench.attacked_group(case)
    seeds = {}
    for s in bench.samples():
        if s.case_id == case.id and s.group == group:
            seeds.setdefault(s.prompt_index, s)
    metric, present = bench.attack_judge, bench.attack_judge.concept_present()

    def judge(ids, k: int) -> bool:
        sample = seeds[k]
        with torch.no_grad():
            image = t2i.generate([sample.pair.prompt], [sample.seed], sampler, conditioning=t2i.condition_ids(ids[None]))
            scores = metric.score(image, [sample])
        return present({key: v[0] for key, v in scores.items()})

    return judge


def check_attacks(editor, bench, trainer=None) -> None:
    """Attacks need an erasure to attack, gradients, a judge of success, one text encoder and their images."""
    if not bench.attacks:
        return
    names = ", ".join(a.name for a in bench.attacks)
    if editor.edits == "none" and editor.delta is None:
        raise UsageError(f"attacks ({names}) try to bring back an erased concept, but {type(editor).__name__} evaluates "
                         "the unedited model: nothing is erased. Give an editor (--model configs/editor/...yaml) or a "
                         "delta (--model.delta), or drop the attacks")
    on_denoiser = [a.name for a in bench.attacks if a.uses_denoiser]
    if editor.edits == "sampling" and on_denoiser:
        raise UsageError(f"attacks ({', '.join(on_denoiser)}) optimise against the denoiser's own prediction, which "
                         f"{type(editor).__name__} leaves as it is (it acts on the sampling loop): only a model-agnostic "
                         "search (RingABell) attacks a generation-time eraser; drop the others")
    if not any(s.group.startswith("attack:") for s in bench.samples()):
        groups = " or ".join(bench.attacked_groups)
        raise UsageError(f"attacks ({names}): {type(bench).__name__} has no case with a request and {groups} prompts: "
                         "nothing is erased to attack. Select cases with requests, or drop the attacks")
    family = editor.t2i.family
    if family not in ATTACK_FAMILIES:
        raise UsageError(f"attacks ({names}) condition on the token ids and token embeddings of one CLIP text encoder "
                         f"(SD-1/2); {family} conditions on {FAMILY_TEXT.get(family, 'another text side')}, which the "
                         "attacks do not search yet: attack an SD-1/2 model")
    paired = [m.name for m in bench.metrics.paired]
    if paired:
        raise UsageError(f"metric(s) {paired} pair each image with the unedited model's, which is never attacked: drop "
                         "them from a benchmark with attacks")
    if trainer is not None and trainer.predict_loop.inference_mode:
        raise UsageError("attacks optimise with gradients, which inference mode forbids: set --trainer.inference_mode "
                         "false (the CLI's default)")
    for a in bench.attacks:
        a.check(bench)
        if getattr(a, "images", None) is not None:
            for c in bench._cases.values():
                request = bench.attack_request(c)
                folder = Path(a.images) / request.source if request else None
                if folder is not None and not image_files(folder):
                    raise UsageError(f"attack {a.name}: no images of {request.source!r} in {folder}: put the concept's "
                                     "PNG/JPEG files there, or leave images unset to draw them with the unedited model")


ATTACK_FAMILIES = ("sd1", "sd2")
FAMILY_TEXT = {"sdxl": "two CLIP text encoders' states concatenated and a pooled vector",
               "sd3": "two CLIP encoders and T5, pooled vectors and a joint attention over text and image tokens",
               "flux": "T5 states and a pooled CLIP vector, through joint attention"}


def attack_results(attacks, run, variant: str, records: list, bench=None) -> dict:
    """Each attack's success rates from the stored records (judged by the benchmark's attack judge), its time per
    attacked case, the judge calls it made in its loop, and where what it found is."""
    out = {}
    groups = bench.attacked_groups if bench is not None else ("efficacy",)
    present = bench.attack_judge.concept_present() if bench is not None and bench.attack_judge is not None else None
    plain = [r for r in records if r.group in groups]
    for a in attacks:
        mine = [r for r in records if r.group == f"attack:{a.name}"]
        found = {c: AdversarialPrompts.load(p) for c in dict.fromkeys(r.case for r in mine)
                 if (p := attack_path(run, variant, a.name, c)).exists()}
        out[a.name] = {**attack_rates(a, mine, plain, present),
                       "seconds_per_case": (sum(f.seconds for f in found.values()) / len(found)) if found else None,
                       "judge_calls": sum(f.judge_calls for f in found.values()) if found else 0,
                       "prompts": {c: f.text for c, f in found.items()},
                       "found": str(run.path / "attacks" / variant / a.name)}
    return out
