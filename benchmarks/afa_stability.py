"""AFA stage one against plain CE on the same data and seed, instrumented step by step.

Runs ltpipe's own stage-one loop (``Stage1Trainer.train_epoch``, the loop ``train_stage1``
runs) for the study's ``afa`` and ``ce`` backbones (benchmarks/study_fmnist.yaml), and logs,
through ``train_epoch``'s ``on_step`` hook and wrappers around the model's AFA calls (no
training code is changed):

- per step: lr, total loss, the CE part (L_ori, and for CE the loss itself), the LBLS part
  (lam * L_all), the number of generated maps G, the size of X_class relative to X, the mean
  and std of X_enh and of X_gen, the shift of the last stage's first BatchNorm input statistics
  caused by the generated rows (|mean(all rows) - mean(real rows)| / std(real rows), averaged
  over channels), the gradient norm (all parameters; AFA module; last stage; head);
- per epoch: top-1 on the balanced validation split in eval mode (running BatchNorm
  statistics, as the pipeline's cache and test use them) and again after re-estimating the
  last stage's BatchNorm statistics on real training images only (no generated rows, the
  model otherwise unchanged), plus train-mode batch accuracy.

    python benchmarks/afa_stability.py --split split.npz --out /tmp/afa/run \\
        [--epochs 20 --t 7 --seed 0 --train-fraction 1.0 --methods afa ce]

writes <out>_steps.csv, <out>_epochs.csv and <out>.png. The split is Fashion-MNIST-LT IF 100
with val_per_class 100 (``ltpipe split``, settings as in study_fmnist.yaml). With
``--epochs E`` the cosine schedule spans E epochs and t defaults to round(E * 7 / 20).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import Any

import numpy as np

STUDY = Path(__file__).with_name("study_fmnist.yaml")


def study_recipe(backbone: str, epochs: int | None, t: int | None) -> dict[str, Any]:
    from ltpipe.yamlfile import load_yaml_strict as load_yaml

    recipe = dict(load_yaml(STUDY)["backbones"][backbone])
    recipe.pop("seeds", None)
    if epochs is not None:
        recipe["epochs"] = epochs
    if recipe.get("afa") is not None:
        recipe["afa"] = dict(recipe["afa"])
        if t is not None:
            recipe["afa"]["t"] = t
        elif epochs is not None:
            recipe["afa"]["t"] = round(epochs * 7 / 20)
    recipe["final_eval"] = False
    return recipe


def _grad_norm(params) -> float:
    import torch

    sq = [p.grad.detach().float().pow(2).sum() for p in params if p.grad is not None]
    return float(torch.stack(sq).sum().sqrt()) if sq else 0.0


class Probe:
    """Wraps an AFA model's decompose / generate / afa_train_forward to record one step."""

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
        self.model = trainer.model
        self.rec: dict[str, float] = {}
        self.bn_in = None
        bn = self.model.stages[-1][0].bn1
        bn.register_forward_hook(self._bn_hook)
        if self.model.afa is not None:
            afa = self.model.afa
            decompose, generate = afa.decompose, afa.generate
            train_forward = self.model.afa_train_forward

            def wrapped_decompose(x):
                out = decompose(x)
                with_no_grad(self._decomposed, x, *out)
                return out

            def wrapped_generate(x_class, x_var, y, generator=None):
                x_gen, y_gen = generate(x_class, x_var, y, generator)
                with_no_grad(self._generated, x_gen)
                return x_gen, y_gen

            def wrapped_forward(x, y, generator=None, generate=True):
                self.batch = x.shape[0]
                out = train_forward(x, y, generator, generate)
                self.out, self.y = out, y
                return out

            afa.decompose, afa.generate = wrapped_decompose, wrapped_generate
            self.model.afa_train_forward = wrapped_forward
        else:
            forward = self.model.forward

            def plain_forward(x):
                self.batch = x.shape[0]
                logits = forward(x)
                self.out = {"logits": logits}
                return logits

            self.model.forward = plain_forward
            trainer.forward = plain_forward

    def _decomposed(self, x, x_enh, x_class, x_var) -> None:
        self.rec.update(class_over_x=float(x_class.norm() / x.norm().clamp_min(1e-12)),
                        x_mean=float(x.mean()), x_std=float(x.std()),
                        enh_mean=float(x_enh.mean()), enh_std=float(x_enh.std()),
                        var_over_x=float(x_var.norm() / x.norm().clamp_min(1e-12)))

    def _generated(self, x_gen) -> None:
        self.rec.update(gen_mean=float(x_gen.mean()), gen_std=float(x_gen.std()))

    def _bn_hook(self, module, inputs, output) -> None:
        if module.training:
            self.bn_in = inputs[0].detach()

    def step_record(self, step: int, epoch: int) -> dict[str, float]:
        import torch
        import torch.nn.functional as F

        tr, model = self.trainer, self.model
        rec = {"step": step, "epoch": epoch, "lr": tr.optimizer.param_groups[0]["lr"]}
        rec.update(self.rec)
        self.rec = {}
        with torch.no_grad():
            out = self.out
            b = self.batch
            y = self.y if hasattr(self, "y") else None
            if "logits_all" in out:
                ce_ori = float(F.cross_entropy(out["logits"].float(), y))
                all_ce = float(F.cross_entropy(out["logits_all"].float(), out["labels_all"]))
                g = int(out["labels_all"].shape[0] - b)
                lam = tr.cfg["afa"]["lam"]
                lbls = lam * all_ce if epoch >= tr.cfg["afa"]["t"] else 0.0
                rec.update(ce_ori=ce_ori, lbls=lbls, loss=ce_ori + lbls, generated=g,
                           logit_absmax=float(out["logits_all"].abs().max()))
                if g > 0:
                    gen_labels = out["labels_all"][b:]
                    rec["gen_ce"] = float(F.cross_entropy(out["logits_all"][b:].float(),
                                                          gen_labels))
                    rec["gen_acc"] = float((out["logits_all"][b:].argmax(1) == gen_labels)
                                           .float().mean())
            rec["batch_acc"] = float((out["logits"].argmax(1) == self.y_step).float().mean())
            if self.bn_in is not None and self.bn_in.shape[0] > b:
                z = self.bn_in.float()
                real = z[:b]
                mu_r, sd_r = real.mean((0, 2, 3)), real.std((0, 2, 3)).clamp_min(1e-6)
                mu_a, sd_a = z.mean((0, 2, 3)), z.std((0, 2, 3))
                rec["bn_mean_shift"] = float(((mu_a - mu_r).abs() / sd_r).mean())
                rec["bn_std_ratio"] = float((sd_a / sd_r).mean())
            self.bn_in = None
        rec["grad_norm"] = _grad_norm(model.parameters())
        rec["grad_last_stage"] = _grad_norm(model.stages[-1].parameters())
        rec["grad_head"] = _grad_norm(model.head.parameters())
        if model.afa is not None:
            rec["grad_afa"] = _grad_norm(model.afa.parameters())
        return rec


def with_no_grad(fn, *args) -> None:
    import torch

    with torch.no_grad():
        fn(*[a.detach() for a in args])


def recalibrated(model: Any, batches: list) -> Any:
    """A copy whose last-stage BatchNorm statistics are re-estimated on real images only."""
    import torch

    from ltpipe.models import model_from_spec

    m = model_from_spec(model.spec)  # a clean copy (no probe wrappers or hooks)
    m.load_state_dict(model.state_dict())
    for mod in m.stages[-1].modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.reset_running_stats()
            mod.momentum = None  # cumulative average over the batches
    m.train()
    with torch.no_grad():
        for x in batches:
            m(x)  # forward = X_enh path, no generation
    m.eval()
    return m


def accuracy(model: Any, data: Any, normalization: dict) -> tuple[float, list[float]]:
    import torch

    from ltpipe.data.batches import eval_batches

    model.eval()
    preds, labels = [], []
    with torch.no_grad():
        for x, y, _ in eval_batches(data, normalization, 500, "cpu"):
            preds.append(model(x).argmax(1))
            labels.append(y)
    p, y = torch.cat(preds).numpy(), torch.cat(labels).numpy()
    per_class = [float((p[y == c] == c).mean()) for c in np.unique(y)]
    return float((p == y).mean()), per_class


def run(method: str, split: Any, args: argparse.Namespace, log) -> tuple[list, list]:
    import torch

    from ltpipe.data import split_data
    from ltpipe.data.batches import eval_batches, subset
    from ltpipe.train.loop import Stage1Trainer
    from ltpipe.train.recipe import normalize_recipe

    cfg = normalize_recipe(study_recipe(method, args.epochs, args.t))
    train = split_data(split, "train")
    if args.train_fraction < 1.0:
        rng = np.random.default_rng(12345)
        keep = np.sort(rng.choice(len(train.labels), int(len(train.labels) * args.train_fraction),
                                  replace=False))
        train = subset(train, keep)
    val = split_data(split, args.eval_part)
    trainer = Stage1Trainer(train, split.class_counts, int(split.num_classes), cfg, "cpu",
                            args.seed)
    probe = Probe(trainer)
    # real training images for the BatchNorm re-estimate: the first 2048, no augmentation
    calib = [x for x, _, _ in eval_batches(subset(train, np.arange(min(2048, len(train.labels)))),
                                           trainer.normalization, 256, "cpu")]
    steps, epochs = [], []
    current = {"epoch": 0}

    # the label of each step's batch, for batch accuracy (read off the data stream)
    orig_epoch = trainer.batches.epoch

    def epoch_stream(generator, start_step=0):
        for x, y in orig_epoch(generator, start_step):
            probe.y_step = y
            probe.y = y
            yield x, y

    trainer.batches.epoch = epoch_stream

    def on_step(global_step: int) -> None:
        rec = probe.step_record(global_step, current["epoch"])
        if "loss" not in rec:
            import torch.nn.functional as F
            with torch.no_grad():
                rec["loss"] = rec["ce_ori"] = float(F.cross_entropy(
                    probe.out["logits"].float(), probe.y))
        rec["method"] = method
        steps.append(rec)

    log(f"{method}: {cfg['epochs']} epochs, {trainer.steps_per_epoch} steps/epoch, "
        f"{len(train.labels)} images, afa {cfg['afa']}")
    for epoch in range(cfg["epochs"]):
        current["epoch"] = epoch
        stats = trainer.train_epoch(epoch, on_step=on_step)
        acc, per_class = accuracy(trainer.model, val, trainer.normalization)
        acc_cal, per_class_cal = accuracy(recalibrated(trainer.model, calib), val,
                                          trainer.normalization)
        ep = [s for s in steps if s["epoch"] == epoch]
        row = {"method": method, "epoch": epoch, "train_loss": stats["loss"],
               "train_batch_acc": stats["acc"], "lr_end": stats["lr"],
               "val_acc": acc, "val_acc_bn_real": acc_cal,
               "val_head": float(np.mean(per_class[:3])),
               "val_tail": float(np.mean(per_class[-3:])),
               "val_tail_bn_real": float(np.mean(per_class_cal[-3:])),
               "max_step_loss": max(s["loss"] for s in ep),
               "max_grad_norm": max(s["grad_norm"] for s in ep),
               "seconds": stats["seconds"]}
        epochs.append(row)
        log(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in row.items()))
    return steps, epochs


def write_csv(path: Path, rows: list[dict]) -> None:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def plot(path: Path, steps: list[dict], epochs: list[dict], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r["method"] for r in steps))
    fig, ax = plt.subplots(3, 2, figsize=(12, 11))
    colors = {"afa": "tab:red", "ce": "tab:blue"}

    def series(rows, key):
        xs = [r["step"] for r in rows if key in r and r[key] != ""]
        ys = [float(r[key]) for r in rows if key in r and r[key] != ""]
        return xs, ys

    for m in methods:
        rows = [r for r in steps if r["method"] == m]
        c = colors.get(m)
        ax[0, 0].plot(*series(rows, "loss"), lw=0.6, color=c, label=f"{m} total")
        if m == "afa":
            ax[0, 0].plot(*series(rows, "ce_ori"), lw=0.6, color="tab:orange",
                          label="afa L_ori (CE part)")
            ax[0, 0].plot(*series(rows, "lbls"), lw=0.6, color="tab:purple",
                          label="afa lam * L_all (LBLS part)")
            ax[1, 1].plot(*series(rows, "bn_mean_shift"), lw=0.6, color="tab:purple",
                          label="last-stage BN input: |mean shift| / std (gen rows)")
            ax[1, 1].plot(*series(rows, "bn_std_ratio"), lw=0.6, color="tab:green",
                          label="last-stage BN input: std(all) / std(real)")
            ax[2, 1].plot(*series(rows, "enh_std"), lw=0.6, color="tab:red", label="X_enh std")
            ax[2, 1].plot(*series(rows, "gen_std"), lw=0.6, color="tab:purple",
                          label="X_gen std")
            ax[2, 1].plot(*series(rows, "enh_mean"), lw=0.6, color="tab:orange",
                          label="X_enh mean")
            ax[2, 1].plot(*series(rows, "gen_mean"), lw=0.6, color="tab:brown",
                          label="X_gen mean")
        ax[0, 1].plot(*series(rows, "grad_norm"), lw=0.6, color=c, label=f"{m} grad norm")
        ax[1, 0].plot(*series(rows, "lr"), lw=1.0, color=c, label=f"{m} lr")
        erows = [r for r in epochs if r["method"] == m]
        ax[2, 0].plot([r["epoch"] + 1 for r in erows], [r["val_acc"] for r in erows], "o-",
                      color=c, label=f"{m} val top-1 (eval BN)")
        if m == "afa":
            ax[2, 0].plot([r["epoch"] + 1 for r in erows],
                          [r["val_acc_bn_real"] for r in erows], "s--", color="tab:green",
                          label="afa val top-1, last-stage BN stats from real images")
    ax[0, 0].set_ylabel("loss")
    ax[0, 0].set_yscale("log")
    ax[0, 1].set_ylabel("gradient norm")
    ax[0, 1].set_yscale("log")
    ax[1, 0].set_ylabel("lr")
    ax[2, 0].set_ylabel("val top-1")
    ax[2, 0].set_xlabel("epoch")
    for a in ax.flat:
        a.legend(fontsize=7)
    for a in (ax[0, 0], ax[0, 1], ax[1, 0], ax[1, 1], ax[2, 1]):
        a.set_xlabel("step")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main(argv: list[str] | None = None) -> None:
    import torch

    from ltpipe.data import read_split

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--split", required=True)
    ap.add_argument("--out", required=True, help="output prefix")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--t", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-fraction", type=float, default=1.0)
    ap.add_argument("--eval-part", default="val", choices=["val", "test"])
    ap.add_argument("--methods", nargs="+", default=["afa", "ce"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--plot-only", action="store_true",
                    help="redraw <out>.png from <out>_steps.csv and <out>_epochs.csv")
    args = ap.parse_args(argv)
    title = (f"{args.split} seed {args.seed}, epochs {args.epochs or 'study'}, "
             f"train fraction {args.train_fraction}")
    if args.plot_only:
        steps = [{k: (v if k == "method" or v == "" else float(v)) for k, v in r.items()}
                 for r in csv.DictReader(open(f"{args.out}_steps.csv"))]
        epochs = [{k: (v if k == "method" else float(v)) for k, v in r.items()}
                  for r in csv.DictReader(open(f"{args.out}_epochs.csv"))]
        plot(Path(f"{args.out}.png"), steps, epochs, title)
        return

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)  # as train_stage1 on a CPU (deterministic: auto)
    split = read_split(args.split)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    logf = open(f"{out}.log", "a")

    def log(msg: str) -> None:
        print(msg, flush=True)
        logf.write(msg + "\n")
        logf.flush()

    steps, epochs = [], []
    for m in args.methods:
        s, e = run(m, split, args, log)
        steps += s
        epochs += e
        write_csv(Path(f"{out}_steps.csv"), steps)
        write_csv(Path(f"{out}_epochs.csv"), epochs)
    plot(Path(f"{out}.png"), steps, epochs, title)
    log(f"wrote {out}_steps.csv {out}_epochs.csv {out}.png")


if __name__ == "__main__":
    main()
