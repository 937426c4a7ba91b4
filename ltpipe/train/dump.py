"""Run a trained stage-one backbone over a split and stream its outputs into a feature cache.

Per part of the split (train, val where present, test) the cache holds: ``pooled`` [N, D]
float32, ``fmap`` [N, D, H, W] (float16 or float32), ``logits`` [N, C] float32 (the stage-one
head's output times the loss scale), ``labels``, ``ids`` and ``cam`` [N, H, W] float32 (the
sample's own-class activation map, min-max normalised; docs/methods.md#fsa). Group ``head``
holds the stage-one head's ``weight`` (and ``bias`` for a linear head); group ``meta`` holds
``class_counts`` and ``shot_groups``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ltpipe.provenance import code_version, host_info, library_versions
from ltpipe.utils import sha256_file


def class_activation_maps(fmap, weight, labels):
    """Own-class CAM of each sample, min-max normalised to [0, 1] per sample.

    ``fmap`` [B, D, H, W], ``weight`` [C, D], ``labels`` [B] (torch tensors). For a map followed
    by average pooling and a linear head, this equals Grad-CAM without a backward pass.
    """
    w = weight[labels].to(fmap.dtype)  # [B, D]
    cam = (w[:, :, None, None] * fmap).sum(1)  # [B, H, W]
    flat = cam.flatten(1)
    lo = flat.min(1).values[:, None, None]
    hi = flat.max(1).values[:, None, None]
    return (cam - lo) / (hi - lo).clamp_min(1e-12)


def dump_cache(split_path: str | Path, model_path: str | Path, out_path: str | Path,
               settings: dict, *, device: str = "cpu", log=print) -> dict:
    """Write the feature cache of ``model_path`` on ``split_path`` to ``out_path`` atomically.

    ``settings``: backend, compression, fmap_dtype, batch_size (config.yaml
    ``cache:``). Returns the manifest. A failure at any point leaves nothing at ``out_path``.
    """

    from ltpipe.cache import CacheWriter
    from ltpipe.data import read_split, split_data
    from ltpipe.models.modelfile import load_checkpoint

    split = read_split(split_path)
    model, meta = load_checkpoint(model_path, device=device)
    if meta.get("split_fingerprint") != split.fingerprint:
        from ltpipe.utils import LtpipeError

        raise LtpipeError(
            f"{model_path} was trained on split {meta.get('split_fingerprint')}, but "
            f"{split_path} is split {split.fingerprint}; retrain it (snakemake --forcerun train)")
    scale = float(meta.get("logit_scale", 1.0))
    fmap_dtype = np.dtype(settings.get("fmap_dtype", "float16"))
    parts = ["train"] + (["val"] if split.val_indices is not None else []) + ["test"]
    head_w = model.head.weight.detach()
    manifest = {
        "kind": "ltpipe-feature-cache",
        "split_fingerprint": split.fingerprint,
        "backbone_sha256": sha256_file(model_path),
        "model_spec": model.spec,
        "recipe": meta.get("recipe"),
        "head_kind": model.head_kind,
        "logit_scale": scale,
        "num_classes": int(split.num_classes),
        "dump_settings": dict(settings),
        "code": code_version(),
        "versions": library_versions(),
        "host": host_info(device),  # this dump's machine; train_host: the backbone's
        "train_host": meta.get("host"),
        "parts": parts,
    }
    with CacheWriter(out_path, backend=settings.get("backend", "zarr"),
                     compression=settings.get("compression", "none")) as writer:
        for part in parts:
            data = split_data(split, part)
            n = _write_part(writer, part, model, data, meta, scale, fmap_dtype, settings, device,
                            head_w)
            log(f"dump: {part}: {n} samples")
        writer.write("head", "weight", head_w.float().cpu().numpy())
        bias = getattr(model.head, "bias", None)
        if bias is not None:
            writer.write("head", "bias", bias.detach().float().cpu().numpy())
        writer.write("meta", "class_counts", np.asarray(split.class_counts, dtype=np.int64))
        writer.write("meta", "shot_groups", np.asarray(split.shot_groups, dtype=np.int8))
        writer.commit(manifest)
    return manifest


def _create_arrays(writer, group: str, n: int, fmap_shape: tuple, num_classes: int,
                   fmap_dtype: np.dtype) -> None:
    d, h, w = fmap_shape
    writer.create(group, "pooled", (d,), np.float32, expected_rows=n)
    writer.create(group, "fmap", (d, h, w), fmap_dtype, expected_rows=n)
    writer.create(group, "logits", (num_classes,), np.float32, expected_rows=n)
    writer.create(group, "cam", (h, w), np.float32, expected_rows=n)
    writer.create(group, "labels", (), np.int64, expected_rows=n)
    writer.create(group, "ids", (), np.int64, expected_rows=n)


def _append_batch(writer, group: str, model, x, y, ids, scale: float, fmap_dtype: np.dtype,
                  head_w, created: dict, n_total: int) -> None:
    import torch

    with torch.inference_mode():
        out = model.forward_all(x)
        fmap = out["fmap"].float()
        cam = class_activation_maps(fmap, head_w.float(), y)
    if not created.get(group):
        _create_arrays(writer, group, n_total, tuple(fmap.shape[1:]),
                       out["logits"].shape[1], fmap_dtype)
        created[group] = True
    writer.append(group, "pooled", out["pooled"].float().cpu().numpy())
    writer.append(group, "fmap", fmap.cpu().numpy().astype(fmap_dtype, copy=False))
    writer.append(group, "logits", (scale * out["logits"].float()).cpu().numpy())
    writer.append(group, "cam", cam.cpu().numpy())
    writer.append(group, "labels", y.cpu().numpy().astype(np.int64))
    writer.append(group, "ids", ids.cpu().numpy().astype(np.int64))


def _write_part(writer, part, model, data, meta, scale, fmap_dtype, settings, device,
                head_w) -> int:
    from ltpipe.data.batches import eval_batches

    created: dict = {}
    n_total = len(data.labels)
    for x, y, ids in eval_batches(data, meta["normalization"], int(settings.get("batch_size", 256)),
                                  device):
        _append_batch(writer, part, model, x, y, ids, scale, fmap_dtype, head_w, created, n_total)
    return n_total

