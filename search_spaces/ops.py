"""Candidate operations of the DARTS family, in two op sets (spec sections 2.1-2.3).

* ``darts``: the original DARTS forms (quark0/darts ``cnn/operations.py``): ``SepConv`` (two depthwise
  separable units), single-unit ``DilConv``, avg-pool with ``count_include_pad=False``, plus the
  ``nor_conv_*`` Conv-BN-ReLU ops of the reference's ``DARTS_OPS``.
* ``sharp``: the sharpDARTS ops (ahundt/sharpDARTS ``cnn/operations.py``), all built on
  :class:`SharpSepConv`: sep, two-unit dil, flood (4x middle channels), choke (fixed middle channels),
  :class:`ResizablePool` (avg-pool with ``count_include_pad=True``) and C_in != C_out support.

Every factory has the signature ``factory(C_in, C_out, stride, affine, C_mid=None) -> nn.Module``.

Choices that differ from the reference (documented in ``docs/search_spaces.md``):

* ``dil_flood_conv_5x5``: the reference uses padding 2 with dilation 2, which shrinks the map by 4 pixels,
  so it was left out of every primitive list. We register it with the correct "same" padding 4; it is in
  no published primitive set either, so published results are unaffected.
* One :class:`FactorizedReduce` serves both op sets. For even sizes it computes exactly DARTS's version;
  unlike DARTS's it also handles odd sizes (the embedded digits data is 8x8 and shrinks to odd sizes fast
  when a user changes the cell count).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from .registry import Registry

__all__ = [
    "Zero",
    "Identity",
    "SharpSepConv",
    "DilConv",
    "DepthwiseConv2d",
    "ResizablePool",
    "FactorizedReduce",
    "ReLUConvBN",
    "ConvBNReLU",
    "Conv7x1_1x7",
    "OpSet",
    "OpFactory",
    "OP_SETS",
    "get_op_set",
    "list_op_sets",
    "list_ops",
    "build_op",
    "op_sets_defining",
    "PARAMETER_FREE_OPS",
    "is_parameter_free",
]

OpFactory = Callable[..., nn.Module]

# Ops without learnable weights of their own; their share in a parsed genotype is the collapse signal
# Max-W targets (a ResizablePool that changes width does own a 1x1 conv, but in the cell spaces C_in == C_out).
PARAMETER_FREE_OPS = frozenset({"none", "skip_connect", "max_pool_3x3", "avg_pool_3x3"})


def is_parameter_free(op_name: str) -> bool:
    """True for ``none``, ``skip_connect`` and the pools (the low-capacity ops of spec section 6)."""
    return op_name in PARAMETER_FREE_OPS


# ---------------------------------------------------------------------------------------------------------
# Building blocks


class Zero(nn.Module):
    """The ``none`` op: zeros with the output shape of a stride-``stride`` op producing ``C_out`` channels."""

    def __init__(self, C_in: int, C_out: int, stride: int) -> None:
        super().__init__()
        self.C_in, self.C_out, self.stride = C_in, C_out, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.C_in == self.C_out:
            return x.mul(0.0)
        n, _, h, w = x.shape
        return x.new_zeros((n, self.C_out, h, w))


class Identity(nn.Identity):
    """``skip_connect`` at stride 1. A named subclass so drop path can recognise it (spec section 4.1)."""


class ReLUConvBN(nn.Sequential):
    """ReLU -> conv -> BN, the cell preprocessing block."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int, affine: bool = True):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )


class ConvBNReLU(nn.Sequential):
    """conv -> BN -> ReLU (the reference's ``nor_conv_*``)."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, affine: bool = True):
        super().__init__(
            nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=(kernel_size - 1) // 2, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
            nn.ReLU(inplace=False),
        )


def _to_phases(x: torch.Tensor, d: int, nhwc: bool) -> torch.Tensor:
    """``(n, c, d*h, d*w)`` -> its ``d x d`` polyphase components stacked in the batch: ``(d*d*n, c, h, w)``."""
    n, c, height, width = x.shape
    h, w = height // d, width // d
    if not nhwc:
        return x.reshape(n, c, h, d, w, d).permute(3, 5, 0, 1, 2, 4).reshape(d * d * n, c, h, w)
    phases = x.permute(0, 2, 3, 1).reshape(n, h, d, w, d, c).permute(2, 4, 0, 1, 3, 5)
    return phases.reshape(d * d * n, h, w, c).permute(0, 3, 1, 2)  # channels-last memory


def _from_phases(y: torch.Tensor, d: int, nhwc: bool) -> torch.Tensor:
    """The inverse of :func:`_to_phases`."""
    dn, c, h, w = y.shape
    n = dn // (d * d)
    if not nhwc:
        return y.reshape(d, d, n, c, h, w).permute(2, 3, 4, 0, 5, 1).reshape(n, c, h * d, w * d)
    merged = y.permute(0, 2, 3, 1).reshape(d, d, n, h, w, c).permute(2, 3, 0, 4, 1, 5)
    return merged.reshape(n, h * d, w * d, c).permute(0, 3, 1, 2)


class _PolyphaseDepthwiseConv(torch.autograd.Function):
    """A stride-1 dilated depthwise conv computed as an undilated one on the polyphase components.

    Saves the input itself (which the ReLU before it saves anyway), not the rearranged copy, and
    rearranges again in backward: the copy is cheap, keeping it for backward would cost one activation.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, d: int, pad: int, nhwc: bool) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        ctx.d, ctx.pad, ctx.nhwc = d, pad, nhwc
        y = nn.functional.conv2d(_to_phases(x, d, nhwc), weight, None, 1, pad, 1, weight.shape[0])
        return _from_phases(y, d, nhwc)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        d, pad, nhwc = ctx.d, ctx.pad, ctx.nhwc
        # Under autocast the forward conv ran in the autocast dtype (the grad's), on casts of the fp32 weight
        # and maybe of x; backward runs outside autocast, so it casts as autocast did and hands each gradient
        # back in its input's dtype (what the native conv's cast nodes would do).
        dtype = grad.dtype
        grad_phases, grad_weight, _ = torch.ops.aten.convolution_backward(
            _to_phases(grad, d, nhwc), _to_phases(x.to(dtype), d, nhwc), weight.to(dtype), None, [1, 1],
            [pad, pad], [1, 1], False, [0, 0], weight.shape[0],
            [ctx.needs_input_grad[0], ctx.needs_input_grad[1], False],
        )  # fmt: skip
        grad_x = _from_phases(grad_phases, d, nhwc).to(x.dtype) if grad_phases is not None else None
        grad_weight = grad_weight.to(weight.dtype) if grad_weight is not None else None
        return grad_x, grad_weight, None, None, None


class DepthwiseConv2d(nn.Conv2d):
    """A depthwise ``nn.Conv2d`` (same weights and state_dict keys) that is fast when dilated on CPU.

    On CPU, PyTorch's backward of a *dilated* depthwise conv is 10-20x slower than of an undilated one
    (it falls back to a generic kernel), and the dilated ops dominated the supernet step. A dilated conv with
    "same" padding ``d * (k - 1) / 2`` is an undilated conv on the ``d x d`` polyphase components of its
    input, so it is computed as one: at stride 1 the components are stacked into the batch (space to
    batch), at stride ``d`` only component (0, 0) is needed (subsample, then convolve). The same products
    are summed, so results agree to float rounding. Other shapes, components smaller than the kernel, and
    other devices (not measured) use the native kernel. ``benchmarks/dilated_conv.py`` measures it against
    ``nn.Conv2d`` (here: 0.26-0.45x the time at stride 1, 0.10-0.19x at stride 2).
    """

    def __init__(
        self, channels: int, kernel_size: int, stride: int = 1, padding: int = 0, dilation: int = 1
    ) -> None:
        super().__init__(channels, channels, kernel_size, stride, padding, dilation=dilation, groups=channels,
                         bias=False)  # fmt: skip
        k, d = self.kernel_size[0], self.dilation[0]
        self._polyphase = (
            d > 1
            and self.kernel_size == (k, k)
            and self.dilation == (d, d)
            and k % 2 == 1
            and self.padding == (d * (k - 1) // 2,) * 2
            and self.stride in ((1, 1), (d, d))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._polyphase or x.device.type != "cpu":
            return super().forward(x)
        d, pad = self.dilation[0], (self.kernel_size[0] - 1) // 2
        nhwc = not x.is_contiguous()  # channels-last (or another layout): rearrange in NHWC, output channels-last
        if self.stride[0] == d:  # only the (0, 0) component reaches the output
            component = x[:, :, ::d, ::d].contiguous(memory_format=torch.channels_last if nhwc else torch.contiguous_format)
            return nn.functional.conv2d(component, self.weight, None, 1, pad, 1, self.in_channels)
        height, width = x.shape[2], x.shape[3]
        # Components smaller than the kernel: the undilated kernel is slower there (8x8, k=5 measured).
        if height % d or width % d or min(height, width) // d < self.kernel_size[0]:
            return super().forward(x)
        return _PolyphaseDepthwiseConv.apply(x, self.weight, d, pad, nhwc)


class SharpSepConv(nn.Sequential):
    """Two depthwise-separable units with a configurable middle width (spec section 2.2).

    Stride and dilation apply only to the first depthwise conv; the second uses "same" padding. With
    ``C_in == C_out == C_mid`` this is exactly DARTS's ``SepConv``.

    Args:
        C_in, C_out: input and output channels.
        kernel_size, stride, padding, dilation: of the first depthwise conv.
        affine: learnable BN affine parameters (False in the supernet, True in final networks).
        C_mid_mult: middle width as a multiple of ``C_out`` (4 for the flood ops).
        C_mid: fixed middle width (the choke ops); overrides ``C_mid_mult``.
    """

    def __init__(
        self,
        C_in: int,
        C_out: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int = 1,
        dilation: int = 1,
        affine: bool = True,
        C_mid_mult: float = 1,
        C_mid: int | None = None,
    ) -> None:
        c_mid = C_mid if C_mid is not None else int(C_out * C_mid_mult)
        if c_mid < 1:
            raise ValueError(f"SharpSepConv needs a middle width >= 1, got C_mid={c_mid}")
        k = kernel_size
        super().__init__(
            nn.ReLU(inplace=False),
            DepthwiseConv2d(C_in, k, stride=stride, padding=padding, dilation=dilation),
            nn.Conv2d(C_in, c_mid, 1, bias=False),
            nn.BatchNorm2d(c_mid, affine=affine),
            nn.ReLU(inplace=False),
            nn.Conv2d(c_mid, c_mid, k, stride=1, padding=(k - 1) // 2, groups=c_mid, bias=False),
            nn.Conv2d(c_mid, C_out, 1, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )


class DilConv(nn.Sequential):
    """DARTS's single-unit dilated separable conv: ReLU -> dw k x k (dilated, strided) -> pw -> BN."""

    def __init__(
        self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int, dilation: int, affine: bool
    ):
        super().__init__(
            nn.ReLU(inplace=False),
            DepthwiseConv2d(C_in, kernel_size, stride=stride, padding=padding, dilation=dilation),
            nn.Conv2d(C_in, C_out, 1, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )


class ResizablePool(nn.Module):
    """A 3x3 pool that can also change the width: pool -> 1x1 conv -> BN(eps=1e-3) when C_in != C_out.

    Args:
        pool_type: ``"max"`` or ``"avg"``.
        count_include_pad: for avg-pool; True in the sharp op set (the reference's default), False in DARTS.
    """

    def __init__(
        self,
        C_in: int,
        C_out: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int = 1,
        affine: bool = True,
        pool_type: str = "max",
        count_include_pad: bool = True,
    ) -> None:
        super().__init__()
        if pool_type == "max":
            self.pool: nn.Module = nn.MaxPool2d(kernel_size, stride=stride, padding=padding)
        elif pool_type == "avg":
            self.pool = nn.AvgPool2d(kernel_size, stride=stride, padding=padding, count_include_pad=count_include_pad)
        else:
            raise ValueError(f"pool_type must be 'max' or 'avg', got {pool_type!r}")
        self.resize: nn.Module | None = None
        if C_in != C_out:
            self.resize = nn.Sequential(
                nn.Conv2d(C_in, C_out, 1, bias=False), nn.BatchNorm2d(C_out, eps=1e-3, affine=affine)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(x)
        return x if self.resize is None else self.resize(x)


class FactorizedReduce(nn.Module):
    """Halves the resolution with two offset stride-2 1x1 convs (spec section 2.3); handles odd sizes.

    The input is zero-padded by one row and column on the bottom/right, so the offset branch sees the
    same output size as the plain branch for odd inputs; for even inputs this equals DARTS's version.
    """

    def __init__(self, C_in: int, C_out: int, stride: int = 2, affine: bool = True) -> None:
        super().__init__()
        if C_out % 2:
            raise ValueError(f"FactorizedReduce needs an even C_out (two halves), got C_out={C_out}")
        if stride != 2:
            raise ValueError(f"FactorizedReduce reduces by exactly 2, got stride={stride}")
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.bn = nn.BatchNorm2d(C_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        shifted = nn.functional.pad(x, (0, 1, 0, 1))[:, :, 1:, 1:]
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(shifted)], dim=1))


class Conv7x1_1x7(nn.Sequential):
    """ReLU -> conv (1x7, stride (1,s)) -> conv (7x1, stride (s,1)) -> BN."""

    def __init__(self, C_in: int, C_out: int, stride: int, affine: bool, bn_eps: float = 1e-5):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_out, (1, 7), stride=(1, stride), padding=(0, 3), bias=False),
            nn.Conv2d(C_out, C_out, (7, 1), stride=(stride, 1), padding=(3, 0), bias=False),
            nn.BatchNorm2d(C_out, eps=bn_eps, affine=affine),
        )


def _skip(C_in: int, C_out: int, stride: int, affine: bool, C_mid: int | None = None) -> nn.Module:
    if stride == 1 and C_in == C_out:
        return Identity()
    if stride == 1:
        return ReLUConvBN(C_in, C_out, 1, 1, 0, affine=affine)
    return FactorizedReduce(C_in, C_out, stride=stride, affine=affine)


# ---------------------------------------------------------------------------------------------------------
# Op sets


@dataclass(frozen=True)
class OpSet:
    """A named family of op factories (``darts`` or ``sharp``)."""

    name: str
    description: str
    ops: Registry[OpFactory]

    def build(
        self, op_name: str, C_in: int, C_out: int, stride: int, affine: bool, C_mid: int | None = None
    ) -> nn.Module:
        """Instantiates op ``op_name``; an unknown name raises listing this set's ops."""
        if stride not in (1, 2):
            raise ValueError(f"op stride must be 1 or 2, got stride={stride} for {op_name!r}")
        return self.ops.get(op_name)(C_in, C_out, stride, affine, C_mid)

    def names(self) -> list[str]:
        return self.ops.names()

    def __contains__(self, op_name: object) -> bool:
        return op_name in self.ops


OP_SETS: Registry[OpSet] = Registry("op set")


def _darts_ops() -> Registry[OpFactory]:
    ops: Registry[OpFactory] = Registry("op (darts op set)")
    r = ops.register
    r("none", lambda ci, co, s, a, m=None: Zero(ci, co, s))
    r("avg_pool_3x3", lambda ci, co, s, a, m=None: ResizablePool(ci, co, 3, s, 1, a, "avg", count_include_pad=False))
    r("max_pool_3x3", lambda ci, co, s, a, m=None: ResizablePool(ci, co, 3, s, 1, a, "max"))
    r("skip_connect", _skip)
    for k in (3, 5, 7):
        r(f"sep_conv_{k}x{k}", lambda ci, co, s, a, m=None, k=k: SharpSepConv(ci, co, k, s, (k - 1) // 2, 1, a))
    r("dil_conv_3x3", lambda ci, co, s, a, m=None: DilConv(ci, co, 3, s, 2, 2, a))
    r("dil_conv_5x5", lambda ci, co, s, a, m=None: DilConv(ci, co, 5, s, 4, 2, a))
    r("conv_7x1_1x7", lambda ci, co, s, a, m=None: Conv7x1_1x7(ci, co, s, a))
    for k in (3, 5, 7):
        r(f"nor_conv_{k}x{k}", lambda ci, co, s, a, m=None, k=k: ConvBNReLU(ci, co, k, s, a))
    return ops


# The choke ops' middle width when none is given: the reference's lambda default, used during search.
DEFAULT_CHOKE_C_MID = 32


def _sharp_ops() -> Registry[OpFactory]:
    ops: Registry[OpFactory] = Registry("op (sharp op set)")
    r = ops.register

    def sharp(k: int, pad: int, dil: int, mult: float = 1, choke: bool = False) -> OpFactory:
        def factory(ci: int, co: int, s: int, a: bool, m: int | None = None) -> nn.Module:
            c_mid = (m if m is not None else DEFAULT_CHOKE_C_MID) if choke else None
            return SharpSepConv(ci, co, k, s, pad, dil, a, C_mid_mult=mult, C_mid=c_mid)

        return factory

    r("none", lambda ci, co, s, a, m=None: Zero(ci, co, s))
    r("max_pool_3x3", lambda ci, co, s, a, m=None: ResizablePool(ci, co, 3, s, 1, a, "max"))
    r("avg_pool_3x3", lambda ci, co, s, a, m=None: ResizablePool(ci, co, 3, s, 1, a, "avg", count_include_pad=True))
    r("skip_connect", _skip)
    r("sep_conv_3x3", sharp(3, 1, 1))
    r("sep_conv_5x5", sharp(5, 2, 1))
    r("sep_conv_7x7", sharp(7, 3, 1))
    r("dil_conv_3x3", sharp(3, 2, 2))
    r("dil_conv_5x5", sharp(5, 4, 2))
    r("flood_conv_3x3", sharp(3, 1, 1, mult=4))
    r("flood_conv_5x5", sharp(5, 2, 1, mult=4))
    r("dil_flood_conv_3x3", sharp(3, 2, 2, mult=4))
    r("dil_flood_conv_5x5", sharp(5, 4, 2, mult=4))  # reference: padding 2 (broken); fixed to 4
    r("choke_conv_3x3", sharp(3, 1, 1, choke=True))
    r("dil_choke_conv_3x3", sharp(3, 2, 2, choke=True))
    r("conv_7x1_1x7", lambda ci, co, s, a, m=None: Conv7x1_1x7(ci, co, s, a, bn_eps=1e-3))
    return ops


OP_SETS.register("darts", OpSet("darts", "original DARTS ops (SepConv, single-unit DilConv)", _darts_ops()))
OP_SETS.register("sharp", OpSet("sharp", "sharpDARTS ops built on SharpSepConv", _sharp_ops()))


def get_op_set(name: str) -> OpSet:
    """Returns the op set ``name`` (``darts`` or ``sharp``)."""
    return OP_SETS.get(name)


def list_op_sets() -> list[str]:
    return OP_SETS.names()


def list_ops(op_set: str) -> list[str]:
    """The op names op set ``op_set`` defines."""
    return get_op_set(op_set).names()


def build_op(
    op_set: str, op_name: str, C_in: int, C_out: int, stride: int, affine: bool, C_mid: int | None = None
) -> nn.Module:
    """Instantiates ``op_name`` from op set ``op_set``."""
    return get_op_set(op_set).build(op_name, C_in, C_out, stride, affine, C_mid)


def op_sets_defining(op_names: Iterable[str]) -> list[str]:
    """The op sets that define every op in ``op_names``."""
    wanted = set(op_names)
    return [name for name, op_set in OP_SETS.items() if wanted <= set(op_set.names())]
