"""Attacks as a stage of an evaluation: where what an attack found on a case's model is kept, the attack run (or read
back) on a case's model as it is now, the checks of a benchmark's attacks before anything is written, and each attack's
rates from a run's stored records. The evaluation's prediction pass calls :func:`find` for an attacked group's first
batch; :mod:`edit_bench.evaluate` calls the rest."""

from __future__ import annotations

from pathlib import Path

from ..errors import UsageError
from ..metrics import EditScores
from ..io import image_files
from .base import AdversarialPrompts, attack_rates, concept_images


def attack_path(run, variant: str, attack: str, case_id: str) -> Path:
    """Where what ``attack`` found on ``case_id``'s model of record set ``variant`` is kept."""
    return run.path / "attacks" / variant / attack / (case_id.replace("/", "_").replace(":", "_") + ".safetensors")


def find(attack, editor, case, sampler, path: Path, batch_size: int = 8) -> AdversarialPrompts:
    """What ``attack`` finds on ``case``'s model as it is now: read back from ``path`` when a previous batch or run stored
    it, else attacked now (the concept images, where the attack uses them, drawn by the editor's origin) and stored."""
    if path.exists():
        return AdversarialPrompts.load(path)
    prompts = [p.prompt for p in case.groups["efficacy"]]
    images = None
    if attack.uses_images:
        images = concept_images(editor.t2i, editor, prompts, sampler, attack.image_seeds, attack.images,
                                case.request.source, batch_size)
    found = attack.run(editor.t2i, case, prompts, images, editor)
    found.save(path)
    return found


def check_attacks(editor, bench, trainer=None) -> None:
    """Attacks need an erasure to attack, gradients, the TIMED judge's success, one text encoder and their images."""
    if not bench.attacks:
        return
    names = ", ".join(a.name for a in bench.attacks)
    if editor.edits == "none" and editor.delta is None:
        raise UsageError(f"attacks ({names}) try to bring back an erased concept, but {type(editor).__name__} evaluates "
                         "the unedited model: nothing is erased. Give an editor (--model configs/editor/...yaml) or a "
                         "delta (--model.delta), or drop the attacks")
    if not any(s.group.startswith("attack:") for s in bench.samples()):
        raise UsageError(f"attacks ({names}): {type(bench).__name__} has no case with a request and efficacy prompts: "
                         "nothing is erased to attack. Select cases with requests, or drop the attacks")
    if not any(isinstance(m, EditScores) and m.name == EditScores.default_name for m in bench.metrics):
        raise UsageError("attacks are scored by the TIMED judge's success (EditScores): keep EditScores in the metrics")
    if editor.t2i.family == "sdxl":
        raise UsageError("attacks condition on token ids of one text encoder (SD-1/2); SDXL's two are not supported yet")
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
                folder = Path(a.images) / c.request.source if c.request else None
                if folder is not None and not image_files(folder):
                    raise UsageError(f"attack {a.name}: no images of {c.request.source!r} in {folder}: put the concept's "
                                     "PNG/JPEG files there, or leave images unset to draw them with the unedited model")


def attack_results(attacks, run, variant: str, records: list) -> dict:
    """Each attack's success rates from the stored records, its time per attacked case and where what it found is."""
    out = {}
    efficacy = [r for r in records if r.group == "efficacy"]
    for a in attacks:
        mine = [r for r in records if r.group == f"attack:{a.name}"]
        found = {c: AdversarialPrompts.load(p) for c in dict.fromkeys(r.case for r in mine)
                 if (p := attack_path(run, variant, a.name, c)).exists()}
        out[a.name] = {**attack_rates(a, mine, efficacy),
                       "seconds_per_case": (sum(f.seconds for f in found.values()) / len(found)) if found else None,
                       "prompts": {c: f.text for c, f in found.items()},
                       "found": str(run.path / "attacks" / variant / a.name)}
    return out
