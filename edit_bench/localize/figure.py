"""``trace.png``: one row per traced prompt.

causal_trace: text-encoder heatmap (layers x tokens, normalised effect), UNet strip (effect per component
in forward order, coloured by kind), and images of the first seed: clean, corrupted, best text state,
best UNet component. locogen: P(attribute) per window start with the clean and attribute-free levels, and
images: clean, attribute-free prompt, chosen window.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..models.adapter import COMPONENT_KINDS, short_name as _short

KIND_COLOURS = dict(zip(COMPONENT_KINDS, ("tab:gray", "tab:blue", "tab:red", "tab:green")))  # the adapter's kinds


def _image(ax, img: torch.Tensor, title: str):
    img = img.detach().cpu()
    img = img.float() / 255 if img.dtype == torch.uint8 else img.float().clamp(0, 1)
    ax.imshow(img.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_title(title, fontsize=6)
    ax.axis("off")


def _causal_row(fig, spec, t):
    import numpy as np

    parts = [k for k in ("text", "unet") if k in t]
    sub = spec.subgridspec(1, len(parts) + 1, width_ratios=[1.2] * len(parts) + [1.6], wspace=0.35)
    for k, part in enumerate(parts):
        ax = fig.add_subplot(sub[0, k])
        if part == "text":
            grid = np.array(t["text"]["effect"], dtype=float)
            im = ax.imshow(grid, aspect="auto", cmap="Purples", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks(range(len(t["text"]["tokens"])))
            ax.set_xticklabels([s.replace("<|startoftext|>", "BOS").replace("<|endoftext|>", "EOS")
                                for s in t["text"]["tokens"]], rotation=60, fontsize=6)
            layers = t["text"]["layers"]
            step = max(1, len(layers) // 12)
            ax.set_yticks(range(0, len(layers), step))
            ax.set_yticklabels([_short(layers[i]) for i in range(0, len(layers), step)], fontsize=6)
            ax.set_title(f"text encoder: restored state (effect)\n{t['prompt']!r}, noised {t['subject']!r}", fontsize=7)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)
        else:
            comps = t["unet"]["components"]
            eff = [0.0 if c["effect"] is None or c["effect"] != c["effect"] else c["effect"] for c in comps]
            ax.bar(range(len(comps)), eff, color=[KIND_COLOURS[c["kind"]] for c in comps], width=1.0)
            ax.axhline(t["threshold"], color="k", lw=0.6, ls="--")
            low = min(eff)
            ax.set_ylim(max(-1.0, min(-0.1, low)), max(1.05, max(eff)))
            if low < -1.0:
                ax.text(0.99, 0.02, f"clipped at -1 (min {low:.1f})", transform=ax.transAxes, ha="right", fontsize=5)
            blocks = {}
            for i, c in enumerate(comps):
                blocks.setdefault(c["component"].split(".resnets")[0].split(".attentions")[0], i)
            ax.set_xticks(list(blocks.values()))
            ax.set_xticklabels([_short(b) for b in blocks], rotation=60, fontsize=6)
            ax.tick_params(axis="y", labelsize=6)
            ax.set_title(f"UNet: restored component (effect)\ndashed: threshold {t['threshold']}", fontsize=7)
            for k, col in KIND_COLOURS.items():
                ax.bar([0], [0], color=col, label=k)
            ax.legend(fontsize=5, loc="upper left", ncol=4, frameon=False)
    imgs = [("clean", t["images"]["clean"]), ("corrupted", t["images"]["corrupted"])]
    if "text" in t:
        b = t["text"]["best"]
        imgs.append((f"best text:\n{_short(b['layer'])} {b['token'].replace('<|endoftext|>', 'EOS')}", t["images"]["best_text"]))
    if "unet" in t:
        imgs.append((f"best UNet:\n{_short(t['unet']['best']['component'])}", t["images"]["best_unet"]))
    isub = sub[0, len(parts)].subgridspec(1, len(imgs), wspace=0.15)
    for k, (title, img) in enumerate(imgs):
        _image(fig.add_subplot(isub[0, k]), img, title)


def _locogen_row(fig, spec, t):
    sub = spec.subgridspec(1, 2, width_ratios=[1.4, 1.2], wspace=0.3)
    ax = fig.add_subplot(sub[0, 0])
    p = [w["p_attribute"] for w in t["windows"]]
    ax.plot(range(len(p)), p, "o-", ms=3, color="tab:red", label="window swapped")
    ax.axhline(t["p_clean"], color="k", lw=0.8, label="clean prompt")
    ax.axhline(t["p_neutral"], color="gray", lw=0.8, ls="--", label="attribute-free prompt")
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("window start (cross-attention site, forward order)", fontsize=7)
    ax.set_ylabel("P(attribute)", fontsize=7)
    ax.tick_params(labelsize=6)
    ax.legend(fontsize=6, frameon=False)
    ax.set_title(f"LocoGen: {t['prompt']!r} -> {t['neutral']!r}", fontsize=7)
    c = t["chosen"]
    imgs = [("clean", t["clean"][0]), ("attribute-free", t["neutral_images"][0]),
            (f"window {c['start']}", t["windows"][c["start"]]["images"][0])]
    isub = sub[0, 1].subgridspec(1, len(imgs), wspace=0.05)
    for k, (title, img) in enumerate(imgs):
        _image(fig.add_subplot(isub[0, k]), img, title)


def save_figure(traces: list[dict], method: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(13, 2.6 * len(traces)), dpi=110)
    grid = fig.add_gridspec(len(traces), 1, hspace=0.9)
    for i, t in enumerate(traces):
        (_causal_row if method == "causal_trace" else _locogen_row)(fig, grid[i, 0], t)
    from ..io import write_atomic

    write_atomic(path, lambda tmp: fig.savefig(tmp, bbox_inches="tight", format="png"))
    plt.close(fig)
