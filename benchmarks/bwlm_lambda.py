"""BWLM's main knob on real data: per-class weight norms and accuracy across the lambda sweep.

Reads one feature cache (and its split), trains BWLM's head at each lambda with ltpipe's own
``bwlm`` method (defaults otherwise), and prints, per lambda: the L2 norm of each class's
weight row (classes sorted by descending training count, as the BWLM paper's Figure 5a), the
ratio of the head-half classes' mean norm to the tail-half's, and test top-1 (all / many /
medium / few). The paper's claim: weight decay shrinks the gap between the norms of frequent and
rare classes (its BWLM curve even rises slightly towards the rare classes) and lifts the tail.

    python benchmarks/bwlm_lambda.py --split results/fmnist/if100/s0/split.npz \\
        --cache results/fmnist/if100/s0/ce/t0/cache.zarr [--lams 0 0.001 0.01 0.1 0.5]
"""

from __future__ import annotations

import argparse

import numpy as np


def main(argv: list[str] | None = None) -> None:
    from ltpipe.cache import open_cache
    from ltpipe.classifiers import run_method
    from ltpipe.classifiers.inputs import features_from_cache
    from ltpipe.data import read_split
    from ltpipe.evaluate import accuracy_report

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--split", required=True, help="split.npz the cache was dumped from")
    ap.add_argument("--cache", required=True, help="a backbone's cache.zarr or cache.h5")
    ap.add_argument("--lams", type=float, nargs="+", default=[0.0, 0.001, 0.01, 0.1, 0.5])
    ap.add_argument("--decay", default="sgd", choices=["sgd", "penalty"])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    split = read_split(args.split)
    with open_cache(args.cache, expect={"split_fingerprint": split.fingerprint}) as reader:
        feat = features_from_cache(reader, {"pooled"})
    order = np.argsort(-np.asarray(feat.class_counts), kind="stable")
    half = len(order) // 2
    print(f"cache {args.cache}; classes by descending count: {order.tolist()}")
    print("lambda | per-class weight norm (descending count) | head/tail norm | all many med few")
    for lam in args.lams:
        out = run_method("bwlm", [feat], {"lam": lam, "decay": args.decay}, args.seed)
        norms = np.linalg.norm(out["head_weight"], axis=1)[order]
        acc = accuracy_report(out["test"], feat.test["labels"], split.shot_groups)
        ratio = norms[:half].mean() / norms[half:].mean()
        cells = " ".join(f"{n:.2f}" for n in norms)
        accs = " ".join("-" if acc[k] is None else f"{acc[k]:.2f}"
                        for k in ("all", "many", "medium", "few"))
        print(f"{lam:g} | {cells} | {ratio:.3f} | {accs}")


if __name__ == "__main__":
    main()
