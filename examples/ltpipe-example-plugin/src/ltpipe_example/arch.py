"""tiny_cnn: a three-stage plain CNN backbone (conv-BN-ReLU per stage), for small images."""

from __future__ import annotations

from collections.abc import Sequence


def tiny_cnn(in_channels: int = 3, widths: Sequence[int] = (16, 32, 64),
             strides: Sequence[int] = (1, 2, 2)):
    """The backbone ``ltpipe.models.build_model("tiny_cnn", ...)`` wraps: a 3x3 conv stem and
    one 3x3 conv-BN-ReLU per stage (``widths`` channels, ``strides`` strides)."""
    from torch import nn

    from ltpipe.models.base import Backbone

    def block(c_in: int, c_out: int, stride: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False),
                             nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))

    stem = block(in_channels, widths[0], 1)
    stages, c = [], widths[0]
    for width, stride in zip(widths, strides, strict=True):
        stages.append(block(c, width, stride))
        c = width
    return Backbone(stem=stem, stages=stages, feature_dim=widths[-1], afa_channels=widths[-2],
                    strides_before_last=[1, *strides[:-1]], default_input_size=32)
