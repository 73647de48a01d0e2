"""The toy world: a renderer of 32x32 scenes, a caption grammar over them, and a ground-truth analyser.

A scene is one shape (circle, square, triangle, diamond, star) of one colour, size and texture on a
background. Captions name any subset of the attributes; what they leave out takes its default. The
defaults are the world's implicit assumptions, like TIMED's "a rose" is red:

- an unqualified shape has a default colour (``"a circle"`` is red, ``"a square"`` blue, ...);
- size defaults to medium, texture to plain, background to white;
- a named entity has a fixed rendering, like RoAD's roles (``"the king"`` is a yellow star).

Captions may start with a framing prefix ("a photo of ...") that changes nothing, so TIME-style
augmentations stay in distribution. ``parse(caption)`` resolves a caption to its scene;
``analyse(images)`` reads colour, shape, size and background back from pixels (the ground truth
against which generated images and the judge are measured).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

SIZE_PX = 32
SHAPES = ("circle", "square", "triangle", "diamond", "star")
COLOURS = {
    "red": (0.86, 0.16, 0.16),
    "green": (0.16, 0.66, 0.24),
    "blue": (0.16, 0.31, 0.86),
    "yellow": (0.92, 0.80, 0.16),
    "purple": (0.59, 0.24, 0.75),
    "orange": (0.96, 0.55, 0.12),
}
BACKGROUNDS = {"white": (0.96, 0.96, 0.96), "black": (0.06, 0.06, 0.06), "gray": (0.50, 0.50, 0.50)}
SIZES = {"small": 6.0, "medium": 9.0, "big": 12.5}  # radius in pixels
TEXTURES = ("plain", "striped", "dotted")
DEFAULT_COLOUR = {"circle": "red", "square": "blue", "triangle": "green", "diamond": "purple", "star": "orange"}
ENTITIES = {"the king": ("star", "yellow"), "the queen": ("circle", "purple"), "the knight": ("square", "green"),
            "the jester": ("triangle", "orange")}
PREFIXES = ("a photo of ", "an image of ", "a picture of ", "a drawing of ")

# Styles: whole-image traits that survive the 8x8 latent, drawn on any scene. "a painting of ..." (the unnamed
# generic style) is a frame; the artists share traits in a chain (Pell-painting: frame, Pell-Vanko: tint,
# Vanko-Monti: band, Monti-Rusko: shadow), so erasing one can leak into its neighbours, and the generic
# painting is a part of Pell. (A shadow never meets a frame: a big shape's shadow hides under it.)
TRAITS = ("frame", "tint", "band", "shadow")
STYLES = {"none": (), "painting": ("frame",), "pell": ("frame", "tint"), "vanko": ("tint", "band"),
          "monti": ("band", "shadow"), "rusko": ("shadow",)}
ARTISTS = ("pell", "vanko", "monti", "rusko")
FRAME = (0.55, 0.10, 0.35)  # a maroon frame, 3 px wide
BAND = (0.20, 0.45, 0.45)  # a teal ground band across the bottom 6 px, behind the shape
SEPIA = (0.95, 0.60, 0.20)  # the background tint: 55 % towards this
SHADOW = (0.28, 0.28, 0.28)  # a drop shadow 5 px down and right of the shape (3 px hid inside one latent cell)
TINT_W, FRAME_W, BAND_Y, SHADOW_D = 0.55, 3, 26, 5


@dataclass(frozen=True)
class Scene:
    """A resolved scene (every attribute set); position comes from the seed, not the caption."""

    shape: str
    colour: str
    size: str = "medium"
    texture: str = "plain"
    background: str = "white"
    style: str = "none"


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


STYLE_FORMS = ("by", "in the style of", "painting of")


def caption(shape: str, colour: str | None = None, size: str | None = None, texture: str | None = None,
            background: str | None = None, prefix: str = "", entity: str | None = None, style: str | None = None,
            form: str = "by") -> str:
    """Write a caption; ``None`` attributes are left out (so they take their defaults). A style is written
    ``... by Vanko``, ``... in the style of Vanko`` or ``a Vanko painting of ...`` (``form``); the generic
    style always as ``a painting of ...``."""
    if entity is not None:
        phrase = entity
    else:
        words = [w for w in (size, texture, colour) if w] + [shape]
        phrase = f"{_article(words[0])} {' '.join(words)}"
    if background:
        phrase += f" on a {background} background"
    if style and style != "none":
        if style not in STYLES:
            raise ValueError(f"unknown style {style!r}")
        if style == "painting":
            phrase = f"a painting of {phrase}"
        elif form == "painting of":
            phrase = f"a {style.capitalize()} painting of {phrase}"
        elif form in STYLE_FORMS:
            phrase = f"{phrase} {form} {style.capitalize()}"
        else:
            raise ValueError(f"unknown style form {form!r}: use one of {STYLE_FORMS}")
    return prefix + phrase


def paraphrases(text: str) -> list[str]:
    """The same scene in the grammar's other surface forms, every word of ``text`` kept: the other ways of naming
    an artist (``by`` / ``in the style of`` / ``a Vanko painting of``), each framing prefix ("a photo of ...", or
    none), the modifiers in reverse order ("a big striped circle" -> "a striped big circle": the grammar reads them
    in any order). ``[]`` for a caption outside the grammar."""
    try:
        parse(text)
    except ValueError:
        return []
    t = " ".join(text.strip().split())
    low = t.lower()
    prefix = next((p for p in PREFIXES if low.startswith(p)), "")
    t = t[len(prefix):]
    words, style, form = t.split(), None, None
    if t.lower().startswith("a painting of "):
        style, t = "painting", t[len("a painting of "):]
    elif len(words) > 4 and words[0] == "a" and words[1].lower() in ARTISTS and words[2:4] == ["painting", "of"]:
        style, form, t = words[1].lower(), "painting of", " ".join(words[4:])
    elif len(words) > 2 and words[-1].lower() in ARTISTS and words[-2] == "by":
        style, form, t = words[-1].lower(), "by", " ".join(words[:-2])
    elif len(words) > 5 and words[-1].lower() in ARTISTS and words[-5:-1] == ["in", "the", "style", "of"]:
        style, form, t = words[-1].lower(), "in the style of", " ".join(words[:-5])

    def write(core: str, pre: str, how: str | None) -> str:
        if style == "painting":
            core = f"a painting of {core}"
        elif style == "" or style is None:
            pass
        elif how == "painting of":
            core = f"a {style.capitalize()} painting of {core}"
        else:
            core = f"{core} {how} {style.capitalize()}"
        return pre + core

    out = []
    if style not in (None, "painting"):
        out += [write(t, prefix, f) for f in STYLE_FORMS if f != form]
    out += [write(t, p, form) for p in ("",) + PREFIXES if p != prefix]
    head, sep, tail = t.partition(" on a ")
    cw = head.split()
    if len(cw) >= 4 and cw[0] in ("a", "an"):  # an article, two or more modifiers, the shape
        mods = cw[1:-1][::-1]
        out.append(write(f"{_article(mods[0])} {' '.join(mods)} {cw[-1]}{sep}{tail}", prefix, form))
    return [p for p in dict.fromkeys(out) if p.lower() != text.strip().lower()]


def parse(text: str) -> Scene:
    """The scene a caption denotes (defaults filled in). Raises ``ValueError`` outside the grammar."""
    return _parse(text)[0]


def constraints(text: str) -> dict:
    """What a caption says of an image, as a judge should read it: shape, colour, texture and style always
    (an unmentioned colour, texture or style is the default: the implicit assumption), size and background
    only when named."""
    scene, mentioned = _parse(text)
    return {k: getattr(scene, k) for k in ("shape", "colour", "texture", "style", *mentioned)}


def matches(constraint: dict, scene: Scene) -> bool:
    return all(getattr(scene, k) == v for k, v in constraint.items())


def scene_for(text: str, rng: random.Random) -> Scene:
    """A scene the caption is true of (unnamed size and background drawn at random)."""
    scene, mentioned = _parse(text)
    return Scene(scene.shape, scene.colour, scene.size if "size" in mentioned else rng.choice(list(SIZES)),
                 scene.texture, scene.background if "background" in mentioned else rng.choice(list(BACKGROUNDS)),
                 scene.style)


def _parse(text: str) -> tuple[Scene, set]:
    t = " ".join(text.lower().strip().split())
    for p in PREFIXES:
        if t.startswith(p):
            t = t[len(p):]
    style = "none"
    words = t.split()
    if t.startswith("a painting of "):
        style, t = "painting", t[len("a painting of "):]
    elif len(words) > 4 and words[0] == "a" and words[1] in ARTISTS and words[2:4] == ["painting", "of"]:
        style, t = words[1], " ".join(words[4:])
    elif len(words) > 2 and words[-1] in ARTISTS and words[-2] == "by":
        style, t = words[-1], " ".join(words[:-2])
    elif len(words) > 5 and words[-1] in ARTISTS and words[-5:-1] == ["in", "the", "style", "of"]:
        style, t = words[-1], " ".join(words[:-5])
    background, mentioned = "white", set()
    if " on a " in t and t.endswith(" background"):
        t, _, bg = t.partition(" on a ")
        background = bg[: -len(" background")]
        mentioned.add("background")
        if background not in BACKGROUNDS:
            raise ValueError(f"unknown background in {text!r}")
    if t in ENTITIES:
        shape, colour = ENTITIES[t]
        return Scene(shape, colour, background=background, style=style), mentioned
    words = t.split()
    if not words or words[0] not in ("a", "an") or words[-1] not in SHAPES:
        raise ValueError(f"{text!r} is not a caption of the toy world")
    shape, mods = words[-1], words[1:-1]
    if any(w in SIZES for w in mods):
        mentioned.add("size")
    size = next((w for w in mods if w in SIZES), "medium")
    texture = next((w for w in mods if w in TEXTURES), "plain")
    colour = next((w for w in mods if w in COLOURS), DEFAULT_COLOUR[shape])
    unknown = [w for w in mods if w not in SIZES and w not in TEXTURES and w not in COLOURS]
    if unknown:
        raise ValueError(f"unknown words {unknown} in {text!r}")
    return Scene(shape, colour, size, texture, background, style), mentioned


def random_caption(rng: random.Random, styles: float = 0.0) -> str:
    """A caption drawn from the training distribution (10 % empty, for classifier-free guidance); a
    fraction ``styles`` of the non-empty ones names a style (the shipped v4 weights: 0.35; the v3 world: 0, it drew none)."""
    u = rng.random()
    if u < 0.10:
        return ""
    prefix = rng.choice(PREFIXES) if rng.random() < 0.35 else ""
    background = rng.choice(list(BACKGROUNDS)) if rng.random() < 0.4 else None
    style = form = None
    if styles and rng.random() < styles:
        style, form = rng.choice(list(STYLES)[1:]), rng.choice(STYLE_FORMS)
    if u < 0.25:
        return caption("", prefix=prefix, entity=rng.choice(list(ENTITIES)), background=background, style=style,
                       form=form or "by")
    pick = lambda options, p: rng.choice(list(options)) if rng.random() < p else None  # noqa: E731
    return caption(rng.choice(SHAPES), colour=pick(COLOURS, 0.55), size=pick(SIZES, 0.35),
                   texture=pick(TEXTURES, 0.3), background=background, prefix=prefix, style=style, form=form or "by")


def random_scene(rng: random.Random, styles: bool = False) -> Scene:
    """A scene with every attribute uniformly random (what an empty caption may show); with ``styles``, the
    style too (half of them unstyled)."""
    scene = Scene(rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.choice(list(SIZES)), rng.choice(TEXTURES),
                  rng.choice(list(BACKGROUNDS)))
    if styles and rng.random() < 0.5:
        scene = Scene(scene.shape, scene.colour, scene.size, scene.texture, scene.background, rng.choice(list(STYLES)[1:]))
    return scene


def _shape_mask(shape: str, x, y, r):
    """Boolean mask of a shape of radius ``r`` centred at the origin (x right, y down)."""
    if shape == "circle":
        return x**2 + y**2 <= r**2
    if shape == "square":
        return (x.abs() <= 0.82 * r) & (y.abs() <= 0.82 * r)
    if shape == "diamond":
        return x.abs() + y.abs() <= 1.15 * r
    if shape == "triangle":
        top, bottom = -r, 0.75 * r
        return (y >= top) & (y <= bottom) & (x.abs() <= (y - top) / (bottom - top) * 1.05 * r)
    if shape == "star":
        theta = torch.atan2(y, x) + math.pi / 2
        radius = r * (0.45 + 0.55 * torch.cos(5 * theta).clamp(min=0) ** 0.8)
        return x**2 + y**2 <= radius**2
    raise ValueError(shape)


def render(scenes: list[Scene], seeds: list[int] | None = None, rng: random.Random | None = None,
           masks: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Images ``[B, 3, 32, 32]`` in [0, 1]; positions jitter by ``seeds`` (or ``rng``), 2x supersampled. With
    ``masks=True`` also each object's mask ``[B, 1, 32, 32]`` in [0, 1] (the share of its pixel the shape covers)."""
    ss, n = 2, SIZE_PX * 2
    coords = (torch.arange(n, dtype=torch.float32) + 0.5) / ss
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    out = torch.empty(len(scenes), 3, n, n)
    shape_masks = torch.empty(len(scenes), 1, n, n)
    for i, s in enumerate(scenes):
        g = random.Random(seeds[i]) if seeds is not None else rng or random.Random()
        r = SIZES[s.size]
        room = max(0.0, min(5.0, SIZE_PX / 2 - r - 1.5))
        cx, cy = SIZE_PX / 2 + g.uniform(-room, room), SIZE_PX / 2 + g.uniform(-room, room)
        x, y = xx - cx, yy - cy
        mask = _shape_mask(s.shape, x, y, r)
        fg = torch.tensor(COLOURS[s.colour])[:, None, None].expand(3, n, n).clone()
        if s.texture == "striped":
            fg = torch.where(((x + y) % 6 < 2.2)[None], fg * 0.45, fg)
        elif s.texture == "dotted":
            fg = torch.where((((x % 6) - 3) ** 2 + ((y % 6) - 3) ** 2 <= 2.0)[None], fg * 0.45, fg)
        traits = STYLES[s.style]
        bg_rgb = torch.tensor(BACKGROUNDS[s.background])
        if "tint" in traits:
            bg_rgb = (1 - TINT_W) * bg_rgb + TINT_W * torch.tensor(SEPIA)
        img = bg_rgb[:, None, None].expand(3, n, n).clone()
        if "band" in traits:
            img[:, yy >= BAND_Y] = torch.tensor(BAND)[:, None]
        if "shadow" in traits:
            img = torch.where(_shape_mask(s.shape, x - SHADOW_D, y - SHADOW_D, r)[None],
                              torch.tensor(SHADOW)[:, None, None], img)
        img = torch.where(mask[None], fg, img)
        if "frame" in traits:
            edge = (xx < FRAME_W) | (xx > SIZE_PX - FRAME_W) | (yy < FRAME_W) | (yy > SIZE_PX - FRAME_W)
            img[:, edge] = torch.tensor(FRAME)[:, None]
        out[i] = img
        shape_masks[i, 0] = mask.float()
    if masks:
        return F.avg_pool2d(out, ss), F.avg_pool2d(shape_masks, ss)
    return F.avg_pool2d(out, ss)


# ------------------------------------------------------------------------------------------ analysis
_ANGLES = (-15.0, -7.5, 0.0, 7.5, 15.0)  # degrees: generated shapes come a little tilted
_TEMPLATES: dict = {}


def _templates():
    """Every shape at every tilt, radius 12, centred, drawn 4x finer than the image ``[K, 1, 128, 128]``,
    with each one's area per squared radius ``[K]`` and centroid offset per radius ``[K, 2]``."""
    if not _TEMPLATES:
        ss, n, r = 4, SIZE_PX * 4, 12.0
        c = (torch.arange(n, dtype=torch.float32) + 0.5) / ss - SIZE_PX / 2
        yy, xx = torch.meshgrid(c, c, indexing="ij")
        masks, names = [], []
        for shape in SHAPES:
            for deg in _ANGLES:
                ca, sa = math.cos(math.radians(deg)), math.sin(math.radians(deg))
                masks.append(_shape_mask(shape, ca * xx + sa * yy, -sa * xx + ca * yy, r).float())
                names.append(shape)
        m = torch.stack(masks)
        area = m.sum((1, 2)) / ss**2
        centroid = torch.stack([(m.sum(1) * c).sum(1), (m.sum(2) * c).sum(1)], 1) / (area[:, None] * ss**2)
        _TEMPLATES.update(masks=m[:, None], names=names, area=area / r**2, centroid=centroid / r, radius=r)
    return _TEMPLATES


def _read_shape(mask: torch.Tensor) -> str:
    """The shape whose rendering best overlaps a foreground mask ``[32, 32]`` (IoU): each shape, upright
    and tilted, is drawn with the mask's area and centroid, so size and position need no search and a
    blurred shape is compared with the shape itself rather than with its bounding box."""
    t = _templates()
    c = torch.arange(SIZE_PX, dtype=torch.float32) + 0.5
    m = mask.float()
    a = m.sum()
    centre = torch.stack([(m.sum(0) * c).sum(), (m.sum(1) * c).sum()]) / a
    r = (a / t["area"]).sqrt()  # [K]
    shift = centre - t["centroid"] * r[:, None]  # [K, 2]: where each candidate's centre goes
    # output pixel (normalised x_n) looks up template coordinate (x_n * 16 + 16 - shift) / scale / 16
    scale = r / t["radius"]
    theta = torch.zeros(len(r), 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / scale
    theta[:, :, 2] = (SIZE_PX / 2 - shift) / (SIZE_PX / 2 * scale[:, None])
    grid = F.affine_grid(theta, [len(r), 1, SIZE_PX, SIZE_PX], align_corners=False)
    drawn = F.grid_sample(t["masks"], grid, align_corners=False)[:, 0] > 0.5  # [K, 32, 32]
    iou = (drawn & mask).sum((1, 2)) / (drawn | mask).sum((1, 2)).clamp(min=1)
    return t["names"][int(iou.argmax())]


def _cone_residual(px: torch.Tensor, colour: torch.Tensor, bg: torch.Tensor) -> torch.Tensor:
    """Squared distance of each pixel ``[N, 3]`` to the cone ``{a colour + b bg : a, b >= 0}``: every
    pixel of a shape of that colour is such a mixture (anti-aliased and blurred edges mix it with the
    background, texture shades are darker multiples of it)."""
    B = torch.stack([colour, bg], 1)  # [3, 2]
    coef = torch.linalg.lstsq(B, px.T).solution  # [2, N], unconstrained
    inside = ((B @ coef - px.T) ** 2).sum(0)
    # where a coefficient is negative the nearest point of the cone lies on one of its two rays
    rays = [((px - (px @ v / (v @ v)).clamp(min=0)[:, None] * v) ** 2).sum(1) for v in (colour, bg)]
    return torch.where((coef >= 0).all(0), inside, torch.minimum(*rays))


@dataclass(frozen=True)
class Reading:
    """What the analyser reads from an image (``style``: a key of ``STYLES``, ``None`` for traits that make
    no style)."""

    colour: str | None
    shape: str | None
    background: str
    area: float
    style: str | None = "none"
    traits: tuple[str, ...] = ()


def _dist2(px: torch.Tensor, rgb) -> torch.Tensor:
    """Squared distance of pixels ``[..., 3]`` to a colour."""
    return ((px - torch.as_tensor(rgb, dtype=px.dtype)) ** 2).sum(-1)


def _segment_dist2(px: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared distance of pixels ``[..., 3]`` to the segment from colour ``a`` to ``b`` (their mixtures)."""
    d = b - a
    t = (((px - a) * d).sum(-1) / (d @ d).clamp(min=1e-6)).clamp(0, 1)
    return ((px - a - t[..., None] * d) ** 2).sum(-1)


def _patch(img: torch.Tensor, rows: slice, cols: slice) -> torch.Tensor:
    return img[:, rows, cols].reshape(3, -1)


def analyse(images: torch.Tensor) -> list[Reading]:
    """Ground truth from pixels.

    Style traits first, each where it is drawn: a frame (most of the outer 2-px ring is maroon), the background and its
    tint (the top edge and the upper side edges inside any frame, nearest of the plain and tinted
    backgrounds), a band (teal in a bottom corner inside any frame), a shadow (pixels that mix the background
    with the shadow grey, lying down and right of the shape). Then the scene: foreground = pixels far from
    the background that are not frame, band or shadow; colour = the palette colour whose non-negative
    mixtures with the background explain the foreground best (edges blend with the background, textures are
    darker shades; the colour is read right from blurred renderings too); shape = the shape (upright or
    tilted up to 15 degrees) whose rendering with the foreground's area and centroid overlaps it best."""
    names_c, pal = list(COLOURS), torch.tensor(list(COLOURS.values()))
    names_b = list(BACKGROUNDS)
    plain = torch.tensor(list(BACKGROUNDS.values()))
    bgs = torch.cat([plain, (1 - TINT_W) * plain + TINT_W * torch.tensor(SEPIA)])  # [2 * B, 3]
    n = SIZE_PX
    out = []
    for img in images.float().clamp(0, 1):
        ring = torch.cat([_patch(img, slice(0, 2), slice(None)), _patch(img, slice(n - 2, n), slice(None)),
                          _patch(img, slice(None), slice(0, 2)), _patch(img, slice(None), slice(n - 2, n))], 1)
        frame = bool((_dist2(ring.T, FRAME) < 0.04).float().mean() > 0.6)
        k = FRAME_W + 1 if frame else 0  # inset of the picture inside the frame
        border = torch.cat([_patch(img, slice(k, k + 2), slice(k, n - k)), _patch(img, slice(k, 18), slice(k, k + 2)),
                            _patch(img, slice(k, 18), slice(n - k - 2, n - k))], 1)
        bg_col = border.median(1).values
        nearest = int(((bgs - bg_col) ** 2).sum(1).argmin())
        background, tint = names_b[nearest % len(names_b)], nearest >= len(names_b)
        rows = slice(BAND_Y, n - FRAME_W) if frame else slice(BAND_Y + 1, n)
        corners = [_patch(img, rows, slice(k, k + 3)).median(1).values,
                   _patch(img, rows, slice(n - k - 3, n - k)).median(1).values]
        band = any(bool(_dist2(c, BAND) < 0.03) for c in corners)

        px = img.permute(1, 2, 0)  # [32, 32, 3]
        fg = _dist2(px, bg_col) > 0.06
        if frame:
            inner = torch.zeros(n, n, dtype=torch.bool)
            inner[k:n - k, k:n - k] = True
            fg &= inner
        d_shadow = _segment_dist2(px, bg_col, torch.tensor(SHADOW))
        if band:  # the band and its blur into the background (a pixel nearer the shadow's mixtures is shadow)
            yy = torch.arange(n)[:, None].expand(n, n)
            d_band = _segment_dist2(px, bg_col, torch.tensor(BAND))
            fg &= ~((yy >= BAND_Y - 2) & (d_band < 0.03) & (d_band < d_shadow))
        shade = fg & (d_shadow < 0.02)
        body = fg & ~shade
        area = float(body.float().sum())
        shadow = False
        if area >= 8 and float(shade.float().sum()) >= max(6.0, 0.1 * area):
            c = torch.arange(n, dtype=torch.float32)
            w = body.float()
            cx, cy = (w.sum(0) * c).sum() / w.sum(), (w.sum(1) * c).sum() / w.sum()
            down_right = (c[None, :] - cx) + (c[:, None] - cy) > 0
            # a shadow lies down and right of the shape; blurred edges that look grey lie all around it
            shadow = bool((shade & down_right).float().sum() > 0.7 * shade.float().sum())
        traits = tuple(t for t, on in zip(TRAITS, (frame, tint, band, shadow)) if on)
        style = next((name for name, ts in STYLES.items() if set(ts) == set(traits)), None)
        if area < 8:
            out.append(Reading(None, None, background, area, style, traits))
            continue
        colour = names_c[int(torch.stack([_cone_residual(img[:, body].T, c, bg_col).sum() for c in pal]).argmin())]
        # fill texture holes (a closing), then compare the mask with each shape drawn to fit it
        filled = F.max_pool2d(body[None, None].float(), 3, 1, 1)
        filled = (-F.max_pool2d(-filled, 3, 1, 1))[0, 0] > 0.5
        out.append(Reading(colour, _read_shape(filled), background, area, style, traits))
    return out
