"""Backbones, heads and the AFA module behind one contract (``LTModel``) and one registry.

``build_model(name, num_classes, ...)`` builds any registered backbone (``model_names()``):
CIFAR ResNets ``resnet8`` / ``resnet20`` / ``resnet32``, torchvision's ``resnet10`` /
``resnet18`` / ``resnet34`` / ``resnet50`` / ``resnext50_32x4d`` / ``resnet152``, and the CIFAR
forms ``resnet18_cifar`` / ``resnet34_cifar``; torchvision's ConvNeXt, ViT, Swin, EfficientNet,
RegNet, DenseNet, MobileNetV2 and further ResNets under their torchvision names (``tv_zoo``).
``model_from_spec(model.spec)`` rebuilds one; ``init_weights.load_init_weights`` starts a
backbone from a weights file. Plug-in architectures (entry points ``ltpipe.architectures``,
docs/extending.md) are built by name the same way.

Importing this package does not import torch: ``architecture_names`` and ``check_model_kwargs``
read the declarations of :mod:`ltpipe.models.catalog` (what the config check uses while Snakemake
builds the DAG); every other name below is imported on first use (PEP 562), with every built-in
backbone registered.
"""

from __future__ import annotations

from ltpipe.models.catalog import architecture_names, check_model_kwargs
from ltpipe.utils import lazy_getattr

#: name -> the module that defines it (imported, with every built-in backbone, on first use)
_LAZY = {
    **dict.fromkeys(("AFAModule", "lbls_loss"), "ltpipe.models.afa"),
    **dict.fromkeys(("Backbone", "LTModel"), "ltpipe.models.base"),
    **dict.fromkeys(("CosineHead", "LinearHead"), "ltpipe.models.heads"),
    **dict.fromkeys(("MODELS", "build_model", "model_from_spec", "model_names",
                     "register_model"), "ltpipe.models.registry"),
}


__getattr__ = lazy_getattr(__name__, _LAZY, "ltpipe.models.registry:register_builtins")

__all__ = ["architecture_names", "check_model_kwargs", *_LAZY]
