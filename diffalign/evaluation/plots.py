"""Pictures of an evaluation: a side-by-side grid (one row per case, one column per model) and the distribution
of every score per model."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .grid import save_grid


def save_side_by_side(images: dict[str, np.ndarray], prompts: list[str], seeds: list[int], path: Path) -> Path:
    """images: model -> uint8 [K, H, W, 3] for the first K cases (same cases for every model)."""
    models = list(images)
    k, h = len(next(iter(images.values()))), next(iter(images.values())).shape[1]
    rows = [np.stack([images[m][i] for m in models]) for i in range(k)]
    titles = [f"[{' | '.join(models)}] seed {seeds[i]}: {prompts[i]}" for i in range(k)]
    return save_grid(rows, titles, path, max_scale=max(1, 256 // h))


def save_distributions(scores: dict[str, dict[str, np.ndarray]], path: Path) -> Path:
    """One panel per score: each model's histogram (NaN cases left out), its mean as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    models = list(scores)
    names = list(scores[models[0]])
    cols = min(4, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        data = [scores[m][name][~np.isnan(scores[m][name])] for m in models]
        pooled = np.concatenate(data)
        if len(pooled) == 0:
            ax.set_title(f"{name} (no cases)")
            continue
        bins = np.histogram_bin_edges(pooled, bins=min(30, max(5, len(np.unique(pooled)))))
        for m, values, colour in zip(models, data, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4):
            ax.hist(values, bins=bins, histtype="step", linewidth=1.5, label=m, color=colour)
            ax.axvline(values.mean(), linestyle="--", linewidth=1, color=colour)
        ax.set_title(name)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
