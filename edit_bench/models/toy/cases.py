"""Write the toy benchmarks (TIMED CSV format) into ``datasets/toy/``.

    python -m edit_bench.models.toy.cases [--out datasets/toy]

Three files, all derived from the world's grammar (deterministic, no randomness):

- ``toy_timed.csv``: implicit-assumption edits ("a circle" -> "a blue circle"). Positives change size,
  texture, background or framing; negatives are other shapes (whose defaults differ from the target
  colour) and explicitly coloured prompts, which must keep their colour.
- ``toy_road.csv``: entity edits, like RoAD's roles ("the king" -> drawn as "the knight", a green square).
- ``toy_erasure.csv``: erasing a style (a texture) or an object (towards an anchor shape, as Concept
  Ablation does), with a ``preserve`` column for editors with a preserve set.
- ``toy_artists.csv``: erasing one named artist's style (toy world v4), the other artists and the generic
  painting kept; ``toy_artists_erase{1,2,3}.csv``: the first 1, 2 or 3 artists erased at once (the ``fixed``
  protocol), the rest kept, as UCE erases many artists.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from .world import ARTISTS, COLOURS, DEFAULT_COLOUR, ENTITIES, SHAPES, caption

HEADER = (["old", "new"] + [c for k in range(1, 6) for c in (f"positive{k}", f"gt{k}")]
          + [c for k in range(1, 6) for c in (f"negative{k}", f"gn{k}")])

# (shape, target colour): two edits per shape, the target never the shape's default
TIMED_EDITS = [("circle", "blue"), ("circle", "green"), ("square", "red"), ("square", "yellow"),
               ("triangle", "purple"), ("triangle", "blue"), ("diamond", "orange"), ("diamond", "green"),
               ("star", "blue"), ("star", "red")]


def _row(old, new, positives, negatives, preserve=None):
    assert len(positives) == 5 and len(negatives) == 5
    row = {"old": old, "new": new}
    for k, (p, g) in enumerate(positives, 1):
        row[f"positive{k}"], row[f"gt{k}"] = p, g
    for k, (n, g) in enumerate(negatives, 1):
        row[f"negative{k}"], row[f"gn{k}"] = n, g
    if preserve is not None:
        row["preserve"] = ";".join(preserve)
    return row


def timed_rows():
    rows = []
    for shape, target in TIMED_EDITS:
        positives = [(caption(shape, **kw), caption(shape, colour=target, **kw)) for kw in
                     ({"size": "big"}, {"size": "small"}, {"background": "black"}, {"prefix": "a photo of "},
                      {"texture": "striped"})]
        others = [s for s in SHAPES if s != shape and DEFAULT_COLOUR[s] != target][:3]
        explicit = next(c for c in COLOURS if c not in (target, DEFAULT_COLOUR[shape]))
        other_explicit = next(c for c in COLOURS if c not in (target, DEFAULT_COLOUR[others[0]], explicit))
        negatives = [(caption(o), caption(o, colour=target)) for o in others]
        negatives += [(caption(shape, colour=explicit), caption(shape, colour=target)),
                      (caption(others[0], colour=other_explicit), caption(others[0], colour=target))]
        rows.append(_row(caption(shape), caption(shape, colour=target), positives, negatives))
    return rows


ROAD_EDITS = [("the king", "the knight"), ("the king", "the queen"), ("the queen", "the jester"),
              ("the knight", "the king"), ("the jester", "the queen")]


def road_rows():
    rows = []
    for old, new in ROAD_EDITS:
        frames = ({"prefix": "a photo of "}, {"prefix": "a drawing of "}, {"background": "black"},
                  {"background": "gray"}, {"prefix": "an image of ", "background": "black"})
        positives = [(caption("", entity=old, **kw), caption("", entity=new, **kw)) for kw in frames]
        bystanders = [e for e in ENTITIES if e not in (old, new)]
        o_shape, o_colour = ENTITIES[old]
        n_shape, n_colour = ENTITIES[new]
        negatives = [(caption("", entity=b), caption("", entity=new)) for b in bystanders]
        negatives += [(caption(o_shape, colour=o_colour), caption(n_shape, colour=n_colour)),
                      (caption("", entity=bystanders[0], background="black"), caption("", entity=new, background="black"))]
        negatives += [(caption(o_shape), caption(n_shape, colour=n_colour))]
        rows.append(_row(old, new, positives, negatives[:5]))
    return rows


def erasure_rows():
    rows = []
    for texture, other in (("striped", "dotted"), ("dotted", "striped")):  # a style
        shapes = list(SHAPES)
        positives = [(caption(s, texture=texture, **kw), caption(s, **kw)) for s, kw in
                     zip(shapes[1:], ({}, {"colour": "blue"}, {"size": "big"}, {"background": "black"}))]
        positives.append((caption("circle", texture=texture, prefix="a picture of "), caption("circle", prefix="a picture of ")))
        negatives = [(caption(s, texture=other), caption(s)) for s in shapes]
        preserve = [caption(s, texture=other) for s in shapes]
        rows.append(_row(caption("circle", texture=texture), caption("circle"), positives, negatives, preserve))
    for obj, anchor in (("star", "circle"), ("diamond", "square")):  # an object, mapped to an anchor shape
        frames = ({"size": "big"}, {"colour": "blue"}, {"background": "black"}, {"texture": "striped"},
                  {"prefix": "a photo of "})
        positives = [(caption(obj, **kw), caption(anchor, colour=kw.get("colour") or DEFAULT_COLOUR[obj],
                                                  **{k: v for k, v in kw.items() if k != "colour"})) for kw in frames]
        keep = [s for s in SHAPES if s not in (obj, anchor)]
        negatives = [(caption(s), caption(anchor, colour=DEFAULT_COLOUR[s])) for s in keep]
        negatives += [(caption(anchor), caption(obj, colour=DEFAULT_COLOUR[anchor])),
                      (caption(keep[0], colour="yellow"), caption(anchor, colour="yellow"))]
        rows.append(_row(caption(obj), caption(anchor, colour=DEFAULT_COLOUR[obj]), positives, negatives,
                         [caption(s) for s in keep + [anchor]]))
    return rows


def _styled(shape, artist, form="by", **kw):
    return caption(shape, style=artist, form=form, **kw)


def artist_rows(erased: tuple[str, ...] = ARTISTS, kept: tuple[str, ...] | None = None):
    """One row per artist of ``erased``: erase the artist's style ("a circle by Vanko" -> "a circle").
    Generality: the artist on other subjects, in every caption form; specificity: the artists of ``kept``
    (default: every other artist) and the generic painting keep their style. The preserve set lists the
    kept styles' prompts (as UCE preserves other artists)."""
    rows = []
    for artist in erased:
        keep = [a for a in ARTISTS if a != artist] if kept is None else list(kept)
        positives = [(_styled("square", artist), caption("square")),
                     (_styled("triangle", artist, "in the style of", colour="blue"), caption("triangle", colour="blue")),
                     (_styled("diamond", artist, "painting of", size="big"), caption("diamond", size="big")),
                     (_styled("star", artist, background="black"), caption("star", background="black")),
                     (caption("", entity="the king", style=artist), caption("", entity="the king"))]
        others = [(_styled(s, a), caption(s)) for a, s in zip(keep * 5, SHAPES)]
        negatives = (others + [(caption("circle", style="painting"), caption("circle"))])[:4]
        negatives.append((caption("square", style="painting"), caption("square")))
        preserve = [_styled(s, a) for a in keep for s in ("circle", "square")] + [caption("circle", style="painting")]
        rows.append(_row(_styled("circle", artist), caption("circle"), positives, negatives, preserve))
    return rows


def caption_rows(n: int = 1000, seed: int = 0) -> list[dict]:
    """The toy world's COCO: ``n`` non-empty captions of the training distribution (styles included), each with
    its own seed, for image quality (CLIP-score, the toy FID against the renderer)."""
    import random

    from .world import random_caption

    rng, rows = random.Random(seed), []
    while len(rows) < n:
        c = random_caption(rng, styles=0.35)
        if c:
            rows.append({"image_id": f"toy{len(rows):05d}", "prompt": c, "evaluation_seed": rng.randrange(100000)})
    return rows


def write(out: Path) -> dict[str, int]:
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    many = [(f"toy_artists_erase{k}.csv", artist_rows(ARTISTS[:k], ARTISTS[k:]), ["preserve"]) for k in (1, 2, 3)]
    for name, rows, extra in (("toy_timed.csv", timed_rows(), []), ("toy_road.csv", road_rows(), []),
                              ("toy_erasure.csv", erasure_rows(), ["preserve"]),
                              ("toy_artists.csv", artist_rows(), ["preserve"]), *many):
        with open(out / name, "w", newline="") as f:
            w = csv.DictWriter(f, HEADER + extra, lineterminator="\n")
            w.writeheader()
            w.writerows(rows)
        counts[name] = len(rows)
    rows = caption_rows()
    with open(out / "toy_captions.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["image_id", "prompt", "evaluation_seed"], lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    counts["toy_captions.csv"] = len(rows)
    return counts


def main(argv=None):
    p = argparse.ArgumentParser(description="Write the toy benchmarks (TIMED format)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[3] / "datasets" / "toy"))
    print(write(Path(p.parse_args(argv).out)))


if __name__ == "__main__":
    main()
