"""Every op of every op set, at stride 1 and 2, on even and odd sizes: shapes and gradients."""

from __future__ import annotations

import pytest
import torch

from search_spaces import ops as ops_module
from search_spaces.ops import build_op, get_op_set, list_op_sets, list_ops, op_sets_defining
from search_spaces.registry import Registry, UnknownNameError
from search_spaces.spaces import get_search_space, list_primitive_sets, get_primitives, list_search_spaces

OP_CASES = [
    pytest.param(op_set, name, id=f"{op_set}-{name}") for op_set in list_op_sets() for name in list_ops(op_set)
]


@pytest.mark.parametrize(("op_set", "name"), OP_CASES)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [8, 7])
@pytest.mark.parametrize("affine", [True, False])
def test_op_shape_and_gradient(op_set, name, stride, size, affine):
    op = build_op(op_set, name, 4, 4, stride, affine)
    x = torch.randn(2, 4, size, size, requires_grad=True)
    y = op(x)
    expected = (size + stride - 1) // stride
    assert y.shape == (2, 4, expected, expected)
    assert torch.isfinite(y).all()
    y.square().sum().backward()
    if name != "none":
        assert x.grad is not None and x.grad.abs().sum() > 0
    for p in op.parameters():
        assert p.grad is not None


@pytest.mark.parametrize("name", list_ops("sharp"))
def test_sharp_ops_change_width(name):
    op = build_op("sharp", name, 4, 8, 2, True)
    assert op(torch.randn(2, 4, 8, 8)).shape == (2, 8, 4, 4)


def test_sharp_sep_conv_equals_darts_sep_conv_structure():
    darts, sharp = build_op("darts", "sep_conv_3x3", 8, 8, 1, True), build_op("sharp", "sep_conv_3x3", 8, 8, 1, True)
    assert [type(m) for m in darts.modules()] == [type(m) for m in sharp.modules()]
    assert sum(p.numel() for p in darts.parameters()) == sum(p.numel() for p in sharp.parameters())


def test_dil_conv_differs_between_op_sets():
    darts = build_op("darts", "dil_conv_3x3", 8, 8, 1, True)
    sharp = build_op("sharp", "dil_conv_3x3", 8, 8, 1, True)
    convs = lambda m: [c for c in m.modules() if isinstance(c, torch.nn.Conv2d)]  # noqa: E731
    assert len(convs(darts)) == 2 and len(convs(sharp)) == 4  # one unit vs two SharpSepConv units
    assert convs(sharp)[0].dilation == (2, 2) and convs(sharp)[2].dilation == (1, 1)


def test_flood_and_choke_middle_widths():
    flood = build_op("sharp", "flood_conv_3x3", 8, 8, 1, True)
    assert flood[2].out_channels == 32  # 4 * C_out
    choke = build_op("sharp", "choke_conv_3x3", 8, 8, 1, True)
    assert choke[2].out_channels == 32  # search default
    assert build_op("sharp", "choke_conv_3x3", 8, 8, 1, True, C_mid=96)[2].out_channels == 96


def test_avg_pool_padding_counts_differ():
    x = torch.ones(1, 1, 4, 4)
    darts = build_op("darts", "avg_pool_3x3", 1, 1, 1, True)(x)
    sharp = build_op("sharp", "avg_pool_3x3", 1, 1, 1, True)(x)
    assert darts[0, 0, 0, 0] == 1.0  # count_include_pad=False
    assert sharp[0, 0, 0, 0] == pytest.approx(4 / 9)  # count_include_pad=True


def test_dil_flood_5x5_keeps_the_size():
    # The reference pads by 2 and shrinks the map by 4 px; ours keeps it.
    assert build_op("sharp", "dil_flood_conv_5x5", 4, 4, 1, True)(torch.randn(1, 4, 9, 9)).shape[-1] == 9


def test_unknown_op_lists_known_ones():
    with pytest.raises(UnknownNameError) as err:
        build_op("sharp", "sep_conv_9x9", 4, 4, 1, True)
    assert "sep_conv_9x9" in str(err.value) and "flood_conv_3x3" in str(err.value)
    with pytest.raises(UnknownNameError, match="known op sets"):
        get_op_set("nope")


def test_registry_refuses_duplicates():
    registry: Registry[int] = Registry("thing")
    registry.register("a", 1)
    with pytest.raises(ValueError, match="duplicate thing name 'a'"):
        registry.register("a", 2)


def test_primitive_sets_match_the_paper():
    assert len(get_primitives("darts")) == 8
    assert len(get_primitives("sharp_darts")) == 9
    assert len(get_primitives("sharper_darts")) == 12
    assert set(list_primitive_sets()) == {"darts", "sharp_darts", "sharper_darts"}
    assert "dil_flood_conv_5x5" not in {p for s in list_primitive_sets() for p in get_primitives(s)}


@pytest.mark.parametrize("space", list_search_spaces())
def test_named_spaces_are_implemented_by_their_op_set(space):
    s = get_search_space(space)
    assert set(s.primitives) <= set(list_ops(s.op_set))


def test_op_sets_defining():
    assert op_sets_defining(["choke_conv_3x3"]) == ["sharp"]
    assert set(op_sets_defining(["sep_conv_3x3", "none"])) == {"darts", "sharp"}


def test_parameter_free_ops():
    assert ops_module.is_parameter_free("none") and not ops_module.is_parameter_free("sep_conv_3x3")


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
@pytest.mark.parametrize(("kernel", "stride", "size"), [(3, 1, 8), (5, 1, 16), (3, 2, 8), (5, 2, 7), (3, 1, 7), (3, 2, 1), (5, 1, 8)])
def test_dilated_depthwise_conv_computes_what_nn_conv2d_computes(kernel, stride, size, memory_format):
    """The polyphase form (and its fallbacks: odd sizes, components under the kernel size) = the native
    dilated conv, forward and backward."""
    dilation, channels = 2, 6
    padding = dilation * (kernel - 1) // 2
    fast = ops_module.DepthwiseConv2d(channels, kernel, stride=stride, padding=padding, dilation=dilation)
    native = torch.nn.Conv2d(channels, channels, kernel, stride, padding, dilation=dilation, groups=channels, bias=False)
    native.load_state_dict(fast.state_dict())  # same parameters, same keys
    x = torch.randn(3, channels, size, size).contiguous(memory_format=memory_format).requires_grad_()
    y_fast, y_native = fast(x), native(x)
    assert y_fast.shape == y_native.shape
    torch.testing.assert_close(y_fast, y_native, rtol=1e-5, atol=1e-5)
    assert y_fast.is_contiguous(memory_format=memory_format) == y_native.is_contiguous(memory_format=memory_format)
    grad = torch.randn_like(y_native)
    gx_fast, gw_fast = torch.autograd.grad(y_fast, (x, fast.weight), grad)
    gx_native, gw_native = torch.autograd.grad(y_native, (x, native.weight), grad)
    torch.testing.assert_close(gx_fast, gx_native, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gw_fast, gw_native, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("input_dtype", [torch.float32, "autocast"], ids=["fp32_input", "low_input"])
def test_dilated_depthwise_conv_under_autocast_matches_the_native_conv(dtype, input_dtype):
    """Under autocast the polyphase backward casts as autocast did and returns each gradient in its input's
    dtype (it raised "expected scalar type Half but found Float" under fp16 before)."""
    channels, size = 4, 8
    fast = ops_module.DepthwiseConv2d(channels, 3, stride=1, padding=2, dilation=2)
    native = torch.nn.Conv2d(channels, channels, 3, 1, 2, dilation=2, groups=channels, bias=False)
    native.load_state_dict(fast.state_dict())
    x = torch.randn(2, channels, size, size, dtype=dtype if input_dtype == "autocast" else torch.float32)
    x.requires_grad_()
    with torch.autocast("cpu", dtype=dtype):
        y_fast, y_native = fast(x), native(x)
    assert y_fast.dtype == y_native.dtype == dtype
    grad = torch.randn_like(y_native)
    gx_fast, gw_fast = torch.autograd.grad(y_fast, (x, fast.weight), grad)
    gx_native, gw_native = torch.autograd.grad(y_native, (x, native.weight), grad)
    assert (gx_fast.dtype, gw_fast.dtype) == (gx_native.dtype, gw_native.dtype) == (x.dtype, torch.float32)
    torch.testing.assert_close(gx_fast, gx_native, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(gw_fast, gw_native, rtol=5e-2, atol=5e-2)


def test_dilated_ops_use_the_fast_depthwise_conv():
    for op_set, name in [("darts", "dil_conv_3x3"), ("darts", "dil_conv_5x5"), ("sharp", "dil_conv_5x5"),
                         ("sharp", "dil_flood_conv_3x3"), ("sharp", "dil_choke_conv_3x3")]:  # fmt: skip
        convs = [m for m in build_op(op_set, name, 4, 4, 1, False).modules() if isinstance(m, ops_module.DepthwiseConv2d)]
        assert convs and convs[0]._polyphase, (op_set, name)
