"""Backbones, heads and the AFA module behind one contract (``LTModel``) and one registry.

``build_model(name, num_classes, ...)`` builds any registered backbone (``model_names()``):
CIFAR ResNets ``resnet8`` / ``resnet20`` / ``resnet32``, torchvision's ``resnet10`` /
``resnet18`` / ``resnet34`` / ``resnet50`` / ``resnext50_32x4d`` / ``resnet152``, and the CIFAR
forms ``resnet18_cifar`` / ``resnet34_cifar``; torchvision's ConvNeXt, ViT, Swin, EfficientNet,
RegNet, DenseNet, MobileNetV2 and further ResNets under their torchvision names (``tv_zoo``).
``model_from_spec(model.spec)`` rebuilds one; ``init_weights.load_init_weights`` starts a
backbone from a weights file. Plug-in architectures (entry points ``ltpipe.architectures``,
docs/extending.md) are built by name the same way.
"""

from ltpipe.models import cifar_resnet, tv_resnet, tv_zoo  # noqa: F401  (registers the backbones)
from ltpipe.models.afa import AFAModule, lbls_loss
from ltpipe.models.base import Backbone, LTModel
from ltpipe.models.heads import CosineHead, LinearHead
from ltpipe.models.registry import (
    MODELS,
    build_model,
    check_model_kwargs,
    model_from_spec,
    model_names,
    register_model,
)

__all__ = ["MODELS", "AFAModule", "Backbone", "CosineHead", "LTModel", "LinearHead",
           "build_model", "check_model_kwargs", "lbls_loss", "model_from_spec", "model_names",
           "register_model", "cifar_resnet", "tv_resnet"]
