"""Building blocks the zoo and the network-spec builder share; one idea per file.

- :mod:`.padding` -- TF "same" padding for any stride (``same_pad``, ``pad_for``)
- :mod:`.conv_same` -- ``Conv1dSame``/``Conv2dSame``/``Conv3dSame``, ``ConvTranspose2dSame``; Keras' transposed
  convolutions for any rank (``transpose_geometry``, ``KerasTransposed``), shared with the Keras reader
- :mod:`.pool_same` -- max/average pooling with "same" padding
- :mod:`.separable` -- ``DepthwiseConv2d``, ``SeparableConv2d`` (Keras layout); ``keep_depthwise``
- :mod:`.lrn` -- ``LocalResponseNorm`` with TensorFlow's parameters
- :mod:`.se` -- ``SqueezeExcite``
- :mod:`.act` -- ``get_activation`` by Keras name
- :mod:`.conv_bn_act` -- ``ConvNormAct`` (conv, norm, activation as torchvision numbers them)
- :mod:`.dropout` -- ``Dropout`` (``nn.Dropout`` with a 2.5x cheaper mask on the CPU)
- :mod:`.norm` -- ``GroupNorm`` (``nn.GroupNorm``, a bf16 channels-last map normalised in fp32 on the CPU);
  ``BatchNorm1d``/``2d``/``3d`` with Keras' running variance, built by ``batch_normalization`` (Keras' momentum)
- :mod:`.keras` -- Keras-style ``Conv2D``/``Dense`` (activation inside) and channels-last ``Reshape``
- :mod:`.divisible` -- ``make_divisible`` channel rounding (MobileNets, SE)
- :mod:`.upsample` -- ``BilinearConvTranspose2d`` (FCN's bilinear-initialised upsampling), ``Upsample``, ``resize``
- :mod:`.aspp` -- ``AtrousConv2d``, ``ASPP`` (DeepLab-v3)
- :mod:`.bf16` -- which convolutions run in fp32 under CPU bf16 autocast (``guard_bf16``), ``is_depthwise``
- :mod:`.layout` -- which layers keep a network out of channels-last training on the CPU (``nhwc_breaker``)
"""

from cnnkit.layers.act import activation_names, get_activation
from cnnkit.layers.aspp import ASPP, AtrousConv2d, ImagePooling, aspp_rates
from cnnkit.layers.bf16 import is_depthwise
from cnnkit.layers.conv_bn_act import ConvNormAct
from cnnkit.layers.conv_same import (
    Conv1dSame,
    Conv2dSame,
    Conv3dSame,
    ConvTranspose2dSame,
    KerasTransposed,
    conv_transpose_same_args,
    resolve_padding,
    transpose_crops,
    transpose_geometry,
)
from cnnkit.layers.divisible import make_divisible
from cnnkit.layers.dropout import Dropout
from cnnkit.layers.keras import Conv2D, Dense, Reshape
from cnnkit.layers.layout import nhwc_breaker
from cnnkit.layers.lrn import LocalResponseNorm
from cnnkit.layers.norm import BatchNorm1d, BatchNorm2d, BatchNorm3d, GroupNorm, batch_normalization
from cnnkit.layers.padding import pad_for, same_pad
from cnnkit.layers.pool_same import (
    AvgPool1dSame,
    AvgPool2dSame,
    AvgPool3dSame,
    MaxPool1dSame,
    MaxPool2dSame,
    MaxPool3dSame,
)
from cnnkit.layers.se import SqueezeExcite
from cnnkit.layers.separable import DepthwiseConv2d, SeparableConv2d, keep_depthwise
from cnnkit.layers.upsample import (
    BilinearConvTranspose2d,
    Upsample,
    bilinear_kernel,
    check_mode,
    init_bilinear_,
    resize,
)

__all__ = [
    "same_pad",
    "nhwc_breaker",
    "pad_for",
    "resolve_padding",
    "Conv1dSame",
    "Conv2dSame",
    "Conv3dSame",
    "ConvTranspose2dSame",
    "KerasTransposed",
    "conv_transpose_same_args",
    "transpose_crops",
    "transpose_geometry",
    "MaxPool1dSame",
    "MaxPool2dSame",
    "MaxPool3dSame",
    "AvgPool1dSame",
    "AvgPool2dSame",
    "AvgPool3dSame",
    "DepthwiseConv2d",
    "SeparableConv2d",
    "is_depthwise",
    "keep_depthwise",
    "LocalResponseNorm",
    "SqueezeExcite",
    "get_activation",
    "activation_names",
    "ConvNormAct",
    "make_divisible",
    "Conv2D",
    "Dense",
    "Reshape",
    "Dropout",
    "GroupNorm",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "batch_normalization",
    "BilinearConvTranspose2d",
    "Upsample",
    "bilinear_kernel",
    "init_bilinear_",
    "check_mode",
    "resize",
    "ASPP",
    "AtrousConv2d",
    "ImagePooling",
    "aspp_rates",
]
