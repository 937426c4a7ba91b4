"""Reading stage-one files: ``load_file`` (any file ``save_atomic`` wrote) and ``load_model``.

Here, with the models, so that the cache dump and the benchmarks read a trained backbone without
importing the stage-one trainer. Both load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ltpipe.utils import LtpipeError

FINAL_KIND = "ltpipe-stage1-model"


def load_file(path: str | Path, kind: str, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a file written by ``save_atomic`` and check that it is a ``kind`` file."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise LtpipeError(f"{path} does not exist; train the stage-one model first "
                          "(ltpipe train ... / snakemake)")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise LtpipeError(f"{path} is corrupt or not a torch file ({type(err).__name__}: "
                          f"{err}); delete it and train again") from err
    if not isinstance(obj, dict) or obj.get("kind") != kind:
        got = obj.get("kind") if isinstance(obj, dict) else type(obj).__name__
        raise LtpipeError(f"{path} is not a {kind} file (found {got!r}); delete it or pass the "
                          "right file")
    return obj


def load_checkpoint(path: str | Path, device: Any = "cpu") -> tuple[Any, dict[str, Any]]:
    """Final stage-one weights -> (model in eval mode on ``device``, meta dict).

    meta holds every entry of the file except ``model_state`` (model_spec, recipe,
    logit_scale, split_fingerprint, epochs, seed, metrics, normalization, init_weights, and the
    code and library versions that trained it: ``code``, ``versions``, and the machine: ``host``;
    see ltpipe.provenance).
    """
    from ltpipe.models import model_from_spec

    obj = load_file(path, FINAL_KIND, map_location="cpu")
    try:
        model = model_from_spec(obj["model_spec"])
        model.load_state_dict(obj["model_state"])
    except (KeyError, RuntimeError) as err:
        raise LtpipeError(f"{path}: weights do not fit the recorded model spec ({err}); the file "
                          "is damaged: delete it and train again") from err
    meta = {k: v for k, v in obj.items() if k != "model_state"}
    model.to(device)
    if (meta.get("recipe") or {}).get("channels_last"):
        import torch

        model.to(memory_format=torch.channels_last)
    return model.eval(), meta
