"""ImageNet-class backbones from torchvision (random init; see ``ltpipe.models.init_weights``
for starting from a weights file).

ResNet-10 (torchvision's ResNet class with BasicBlock [1, 1, 1, 1]), ResNet-18, ResNet-34,
ResNet-50, ResNeXt-50 32x4d, ResNet-152; and ``resnet18_cifar`` / ``resnet34_cifar``, the
CIFAR form of ResNet-18/34 that FSA reports (the common CIFAR adaptation: a 3x3 stride-1 stem
conv and no max-pool, so a 32x32 image gives a 512x4x4 final map; projection shortcuts).

The stem is conv1-bn1-relu-maxpool, the stages are layer1..layer4 (the final map F is
layer4's output; AFA sits between layer3 and layer4); torchvision's avgpool and fc are dropped
(LTModel pools and owns the head). ``in_channels != 3`` replaces conv1 by a fresh 7x7 stride-2
conv with that many input channels (torchvision's init for it). torchvision is imported lazily.
"""

from __future__ import annotations

from torch import nn

from ltpipe.models.base import Backbone
from ltpipe.models.registry import register_model


def _from_torchvision(net: nn.Module, in_channels: int) -> Backbone:
    """Split a torchvision ResNet into the stem / stages of a Backbone."""
    if in_channels != 3:
        old = net.conv1
        net.conv1 = nn.Conv2d(in_channels, old.out_channels, kernel_size=old.kernel_size,
                              stride=old.stride, padding=old.padding, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
    stages = [net.layer1, net.layer2, net.layer3, net.layer4]
    feature_dim = net.fc.in_features
    afa_channels = feature_dim // 2  # layer3 has half the channels of layer4 in every ResNet
    # conv1 stride 2, maxpool stride 2, layer1 stride 1, layer2 and layer3 stride 2.
    return Backbone(stem=stem, stages=stages, feature_dim=feature_dim, afa_channels=afa_channels,
                    strides_before_last=[2, 2, 1, 2, 2], default_input_size=224)


@register_model("resnet10")
def resnet10(in_channels: int = 3, zero_init_residual: bool = False) -> Backbone:
    """ResNet-10: torchvision's ResNet with BasicBlock [1, 1, 1, 1]; D = 512."""
    from torchvision.models.resnet import BasicBlock, ResNet

    net = ResNet(BasicBlock, [1, 1, 1, 1], zero_init_residual=zero_init_residual)
    return _from_torchvision(net, in_channels)


def _cifar_stem(net: nn.Module, in_channels: int) -> Backbone:
    """torchvision ResNet -> its CIFAR form: 3x3 stride-1 stem conv, no max-pool."""
    net.conv1 = nn.Conv2d(in_channels, net.conv1.out_channels, kernel_size=3, stride=1, padding=1,
                          bias=False)
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    net.maxpool = nn.Identity()
    backbone = _from_torchvision(net, in_channels=3)  # conv1 is already the right one
    backbone.strides_before_last = [1, 1, 1, 2, 2]
    backbone.default_input_size = 32
    return backbone


def _torchvision_ctor(tv_name: str, cifar: bool, doc: str):
    """A registry constructor for torchvision's ``tv_name`` (in its CIFAR form if ``cifar``)."""

    def ctor(in_channels: int = 3, zero_init_residual: bool = False) -> Backbone:
        import torchvision.models as tvm

        net = getattr(tvm, tv_name)(weights=None, zero_init_residual=zero_init_residual)
        return _cifar_stem(net, in_channels) if cifar else _from_torchvision(net, in_channels)

    ctor.__doc__ = doc
    ctor.__name__ = ctor.__qualname__ = tv_name + ("_cifar" if cifar else "")
    return ctor


for _name, _tv_name, _cifar, _doc in [
    ("resnet18", "resnet18", False, "torchvision ResNet-18 (ImageNet stem); D = 512."),
    ("resnet34", "resnet34", False, "torchvision ResNet-34 (ImageNet stem); D = 512."),
    ("resnet50", "resnet50", False, "torchvision ResNet-50; D = 2048."),
    ("resnext50_32x4d", "resnext50_32x4d", False, "torchvision ResNeXt-50 32x4d; D = 2048."),
    ("resnet152", "resnet152", False, "torchvision ResNet-152; D = 2048."),
    ("resnet18_cifar", "resnet18", True,
     "ResNet-18 in its CIFAR form (FSA's backbone): 512x4x4 final map at 32x32; D = 512."),
    ("resnet34_cifar", "resnet34", True,
     "ResNet-34 in its CIFAR form: 512x4x4 final map at 32x32; D = 512."),
]:
    register_model(_name)(_torchvision_ctor(_tv_name, _cifar, _doc))
