"""PNG figures of a finished run: per-class accuracy, sweeps, weight norms, confusion, t-SNE.

Every function takes the inputs of one plot job (metrics.json paths, caches) and writes one PNG
atomically. Classes are always ordered by training count, largest first, so the long tail reads
left to right. matplotlib (Agg) is imported only when a figure is drawn.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from ltpipe.report import plotdata as pdata
from ltpipe.utils import atomic_path

DPI = 110
SHOT_MARKERS = {0: "o", 1: "^", 2: "X"}
SHOT_NAMES = dict(enumerate(pdata.SHOT_NAMES))
METRIC_STYLE = {"all": ("black", "o"), "many": ("tab:blue", "s"),
                "medium": ("tab:orange", "^"), "few": ("tab:red", "v")}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: str | Path) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    _plt().close(fig)


def _setting(runs: list[pdata.Run]) -> str:
    r = runs[0]
    return f"{r.dataset} IF{r.imbalance_factor}" if r.dataset else ""


def _names(runs: list[pdata.Run], order: np.ndarray) -> list[str]:
    """Tick labels of the classes ``order``: their names (cut to 14 characters)."""
    names = runs[0].class_names
    return [n if len(n) <= 14 else n[:13] + "\u2026" for n in (names[c] for c in order)]


def _class_axis(ax, counts_sorted: np.ndarray, order: np.ndarray, shots: np.ndarray,
                names: list[str]) -> None:
    """Tick labels (class names), shot-group boundaries and training counts (grey bars, log
    scale)."""
    C = len(order)
    if C <= 20:
        ax.set_xticks(range(C))
        rotate = max(map(len, names), default=0) > 3
        ax.set_xticklabels(names, fontsize=8, rotation=45 if rotate else 0,
                           ha="right" if rotate else "center")
        ax.set_xlabel("class (sorted by training count, largest first)")
    else:
        ax.set_xlabel("class rank by training count (0 = largest)")
    ax.set_xlim(-0.6, C - 0.4)
    starts = [0] + [k for k in range(1, C) if shots[k] != shots[k - 1]] + [C]
    for a, b in zip(starts[:-1], starts[1:]):
        if a:
            ax.axvline(a - 0.5, color="0.5", ls=":", lw=1)
        name = SHOT_NAMES.get(int(shots[a]), "")
        ax.text((a + b - 1) / 2, 1.0, name, transform=ax.get_xaxis_transform(), ha="center",
                va="bottom", fontsize=7, color="0.35")
    twin = ax.twinx()
    twin.bar(range(C), counts_sorted, color="0.85", width=0.9 if C <= 20 else 1.0, lw=0, zorder=0)
    twin.set_yscale("log")
    lo, hi = max(float(np.min(counts_sorted)), 1.0), max(float(np.max(counts_sorted)), 1.0)
    twin.set_ylim(lo / 2.0, hi * 1.3)
    twin.set_ylabel("training images (log)", color="0.45", fontsize=8)
    twin.tick_params(axis="y", colors="0.45", labelsize=7)
    ax.set_zorder(twin.get_zorder() + 1)
    ax.patch.set_visible(False)


def _smooth(y: np.ndarray) -> np.ndarray:
    """Moving average over ~4% of the classes (none for 50 classes or fewer)."""
    w = max(1, len(y) // 25) if len(y) > 50 else 1
    if w == 1:
        return y
    return np.convolve(np.pad(y, (w // 2, w - 1 - w // 2), mode="edge"), np.ones(w) / w, "valid")


def _grid(plt, n: int, width: float = 5.0, height: float = 3.4):
    ncols = min(3, n)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def plot_per_class(metric_paths: list[str], out: str | Path) -> None:
    """Per-class test accuracy against class size: one panel per method (all its sweep points),
    the joint baseline dashed in every panel."""
    plt = _plt()
    runs = pdata.load_runs(metric_paths)
    by_entry = pdata.entries(runs)
    counts = pdata.mean_counts(runs)
    order = pdata.class_order(counts)
    shots = runs[0].shot_groups[order]
    joint = [v for v in by_entry.values() if pdata.is_joint(v)]
    others = [v for v in by_entry.values() if not pdata.is_joint(v)]
    panels: dict[str, list] = {}
    for members in others or joint:  # a group of joint entries only: one panel of them
        panels.setdefault(members[0].classifier if others else "joint", []).append(members)
    fig, axes = _grid(plt, len(panels))
    x = np.arange(len(order))
    for ax, (clf, member_lists) in zip(axes, panels.items()):
        for members in joint if others else []:
            ax.plot(x, _smooth(pdata.mean_per_class(members)[order]), color="0.3", ls="--",
                    lw=1.2, label=f"{members[0].label} (baseline)")
        colors = plt.get_cmap("viridis")(np.linspace(0.0, 0.85, len(member_lists)))
        for color, members in zip(colors, member_lists):
            y = pdata.mean_per_class(members)[order]
            one = len(member_lists) == 1 or not others
            ax.plot(x, _smooth(y), color=color, marker="o" if len(x) <= 20 else None, ms=3,
                    lw=1.5, label=members[0].label if one else members[0].point)
        _class_axis(ax, counts[order], order, shots, _names(runs, order))
        ax.set_ylim(-3, 103)
        ax.set_ylabel("test accuracy per class (%)")
        ax.set_title(f"{clf} ({member_lists[0][0].method})", fontsize=10, pad=12)
        ax.legend(fontsize=7, loc="best", framealpha=0.85)
    fig.suptitle(f"Per-class accuracy, {_setting(runs)}, backbone {'+'.join(runs[0].backbones)}"
                 f" (mean over {len({(r.split_seed, r.seed) for r in runs})} run(s))", fontsize=11)
    fig.tight_layout()
    _save(fig, out)


def plot_sweep(metric_paths: list[str], out: str | Path, classifier: str) -> None:
    """Accuracy (all / many / medium / few) against the swept setting of one classifier entry;
    the joint baseline's overall accuracy as a grey line."""
    plt = _plt()
    runs = pdata.load_runs(metric_paths)
    mine = [r for r in runs if r.classifier == classifier]
    if not mine:
        from ltpipe.utils import LtpipeError

        raise LtpipeError(f"no metrics.json of classifier {classifier!r} among the inputs; "
                          f"found {sorted({r.classifier for r in runs})}")
    name, axis, numeric = pdata.sweep_axis(mine)
    curves = pdata.sweep_curves(mine)
    xs = np.array([v for _, v in axis], dtype=float) if numeric else np.arange(len(axis))
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for metric, (mean, std) in curves.items():
        if np.all(np.isnan(mean)):
            continue
        color, marker = METRIC_STYLE[metric]
        ax.plot(xs, mean, color=color, marker=marker, lw=2 if metric == "all" else 1.3,
                label=metric)
        ax.fill_between(xs, mean - std, mean + std, color=color, alpha=0.15, lw=0)
    for members in pdata.entries([r for r in runs if r.method == "joint"]).values():
        base = np.mean([float(r.test["all"]) for r in members])
        ax.axhline(base, color="0.4", ls="--", lw=1, label=f"{members[0].label}: all")
    if not numeric:
        ax.set_xticks(xs)
        ax.set_xticklabels([str(v) for _, v in axis], rotation=30, ha="right", fontsize=8)
    ax.set_xlabel(name)
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(-3, 103)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best", framealpha=0.85)
    ax.set_title(f"{classifier} ({mine[0].method}) sweep, {_setting(mine)}, backbone "
                 f"{'+'.join(mine[0].backbones)}\nevery point reported, none selected on test",
                 fontsize=10)
    fig.tight_layout()
    _save(fig, out)


def plot_weight_norms(metric_paths: list[str], cache_paths: list[str], out: str | Path) -> None:
    """Per-class classifier weight norms (relative to their mean) sorted by class size: the
    stage-one head(s) and every method head found in logits.npz as ``head_weight``."""
    plt = _plt()
    runs = pdata.load_runs(metric_paths)
    counts = pdata.mean_counts(runs)
    order = pdata.class_order(counts)
    lines = {f"stage one ({b})": v for b, v in pdata.stage_one_norms(cache_paths).items()}
    lines.update(pdata.method_norms([r for r in runs if r.method != "joint"]))
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    x = np.arange(len(order))
    colors = plt.get_cmap("tab10" if len(lines) <= 10 else "viridis")(
        np.linspace(0, 1, len(lines)) if len(lines) > 10 else np.arange(len(lines)))
    for color, (label, norms) in zip(colors, lines.items()):
        rel = norms[order] / max(float(norms.mean()), 1e-12)
        stage_one = label.startswith("stage one")
        # one stage-one head: black; two (FFN's backbones): their own colours, or they read as one
        black = stage_one and len(lines) > 1 and sum(k.startswith("stage one") for k in lines) == 1
        ax.plot(x, _smooth(rel), color="black" if black else color,
                lw=2 if stage_one else 1.3, ls="-" if stage_one else "--",
                marker="o" if len(x) <= 20 else None, ms=3, label=label)
    ax.axhline(1.0, color="0.6", lw=0.8)
    _class_axis(ax, counts[order], order, runs[0].shot_groups[order], _names(runs, order))
    ax.set_ylabel(r"$\|w_j\|$ / mean$_j \|w_j\|$")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.1, 1.0), framealpha=0.85)
    ax.set_title(f"Classifier weight norms, {_setting(runs)}", fontsize=10, pad=14)
    notes = pdata.missing_head_notes(runs, set(lines))
    if notes:  # below the x label, so nothing overlaps the title or the shot-group names
        text = "No curve (no trained head weight, by design):\n" + "\n".join(
            textwrap.fill(n, 110, subsequent_indent="    ") for n in notes)
        ax.text(0.0, -0.2, text, transform=ax.transAxes, ha="left", va="top", fontsize=7.5)
    fig.tight_layout()
    _save(fig, out)


def plot_confusion(metric_paths: list[str], cache_paths: list[str], out: str | Path) -> None:
    """Row-normalised test confusion matrices (%), one panel per method and sweep point, classes
    ordered by training count."""
    plt = _plt()
    runs = pdata.load_runs(metric_paths)
    by_entry = pdata.entries(runs)
    order = pdata.class_order(pdata.mean_counts(runs))
    C = len(order)
    fig, axes = _grid(plt, len(by_entry), width=3.6, height=3.6)
    im = None
    for ax, members in zip(axes, by_entry.values()):
        cm = pdata.confusion(members, cache_paths)[np.ix_(order, order)]
        im = ax.imshow(cm, vmin=0, vmax=100, cmap="Blues")
        ax.set_xticks(range(C))
        ax.set_yticks(range(C))
        ax.set_xticklabels(_names(runs, order), fontsize=6 if C > 10 else 7, rotation=90)
        ax.set_yticklabels(_names(runs, order), fontsize=6 if C > 10 else 7)
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_ylabel("true (largest class on top)", fontsize=8)
        ax.set_title(members[0].label, fontsize=9)
        if C <= 10:
            for i in range(C):
                for j in range(C):
                    if cm[i, j] >= 0.5:
                        ax.text(j, i, f"{cm[i, j]:.0f}", ha="center", va="center", fontsize=5.5,
                                color="white" if cm[i, j] > 60 else "black")
    fig.suptitle(f"Confusion (% of each true class), {_setting(runs)}", fontsize=11)
    # leave the suptitle its own band (about 0.45 inch) above the top row's panel titles
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / fig.get_figheight()))
    fig.colorbar(im, ax=axes, shrink=0.5, fraction=0.025, pad=0.02, label="% of true class")
    _save(fig, out)


def plot_tsne(cache_paths: list[str], out: str | Path, title: str = "", max_points: int = 1000,
              seed: int = 0, w1: float | None = None, normalize: bool = False) -> None:
    """2-D t-SNE of a fixed subsample of cached test features, coloured by class; marker shape
    gives the class's shot group (many / medium / few)."""
    plt = _plt()
    d = pdata.tsne_points(cache_paths, max_points, seed, w1, normalize)
    xy, labels, shots, counts = d["xy"], d["labels"], d["shot_groups"], d["class_counts"]
    C = len(counts)
    rank = np.empty(C, dtype=int)
    rank[pdata.class_order(counts)] = np.arange(C)
    cmap = plt.get_cmap("tab10" if C <= 10 else "tab20" if C <= 20 else "turbo")
    colors = cmap(rank[labels] if C <= 20 else rank[labels] / max(C - 1, 1))
    fig, ax = plt.subplots(figsize=(7.0, 5.6))
    for g, marker in SHOT_MARKERS.items():
        sel = shots[labels] == g
        if sel.any():
            ax.scatter(xy[sel, 0], xy[sel, 1], c=colors[sel], marker=marker, s=22 if g else 16,
                       alpha=0.8, linewidths=0)
    handles = [plt.Line2D([], [], ls="", marker=m, color="0.3", label=f"{pdata.SHOT_NAMES[g]}"
                          f"-shot classes") for g, m in SHOT_MARKERS.items() if (shots == g).any()]
    if C <= 20:
        handles += [plt.Line2D([], [], ls="", marker="s", color=cmap(rank[c]),
                               label=f"class {c} (n={int(counts[c])})")
                    for c in pdata.class_order(counts)]
    else:
        sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, C - 1))
        fig.colorbar(sm, ax=ax, label="class rank by training count (0 = largest)")
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"t-SNE of test features{': ' + title if title else ''}\n"
                 f"{len(labels)} test samples (fixed subsample, seed {seed})", fontsize=10)
    fig.tight_layout()
    _save(fig, out)
