"""Which layers a `layer_quantize_config` entry names (VAIQ35 7.2).

`layer_name` matches, for one node:
- our node name ("conv2d_3"), or the original's `<Graph>::<name>` form of it ("ResNet::input_0");
- a module path (the node's scope "layer1.0.conv1", or any enclosing module "layer1");
- the original's node name `<Graph>::<Class>/<Sub>[attr]/.../<value>` ("ResNet::ResNet/Conv2d[conv1]/ret.3"):
  on its scope path "ResNet/Conv2d[conv1]", exactly; the trailing value name varies with the torch version
  and is ignored. A node's scope path is built from the float model's module classes (`scope_path`).
`layer_type` keeps the part after the last "." ("torch.nn.Conv2d" == "Conv2d") and matches the node's op:
torch module names (Conv2d, Linear, ReLU, MaxPool2d, ...) and the original's lower-case functional names
(add, mul, cat, matmul, ...; every op name of our vocabulary). A name outside those tables matches nodes
whose own module is of that class (a custom block).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..ir.ops import CONV_OPS, Op

__all__ = ["TYPE_OPS", "LayerRef", "any_match", "name_matches", "scope_path", "type_matches"]

_C = frozenset
TYPE_OPS: dict[str, frozenset[Op]] = {
    "Conv1d": _C({Op.CONV1D}),
    "Conv2d": _C({Op.CONV2D}),
    "Conv3d": _C({Op.CONV3D}),
    "ConvTranspose1d": _C({Op.CONV_TRANSPOSE1D}),
    "ConvTranspose2d": _C({Op.CONV_TRANSPOSE2D}),
    "ConvTranspose3d": _C({Op.CONV_TRANSPOSE3D}),
    "Linear": _C({Op.LINEAR}),
    "BatchNorm1d": _C({Op.BATCH_NORM, Op.CHANNEL_SCALE}),
    "BatchNorm2d": _C({Op.BATCH_NORM, Op.CHANNEL_SCALE}),
    "BatchNorm3d": _C({Op.BATCH_NORM, Op.CHANNEL_SCALE}),
    "Embedding": _C({Op.EMBEDDING}),
    "LayerNorm": _C({Op.LAYER_NORM}),
    "GroupNorm": _C({Op.GROUP_NORM}),
    "ReLU": _C({Op.RELU}),
    "ReLU6": _C({Op.RELU6}),
    "Hardtanh": _C({Op.HARDTANH}),
    "LeakyReLU": _C({Op.LEAKY_RELU}),
    "Sigmoid": _C({Op.SIGMOID}),
    "Tanh": _C({Op.TANH}),
    "SiLU": _C({Op.SILU}),
    "GELU": _C({Op.GELU}),
    "Hardsigmoid": _C({Op.HARDSIGMOID}),
    "Hardswish": _C({Op.HARDSWISH}),
    "Softmax": _C({Op.SOFTMAX}),
    "MaxPool2d": _C({Op.MAX_POOL2D}),
    "AvgPool2d": _C({Op.AVG_POOL2D}),
    "AdaptiveAvgPool2d": _C({Op.ADAPTIVE_AVG_POOL2D}),
    "Upsample": _C({Op.INTERPOLATE}),
    "UpsamplingNearest2d": _C({Op.INTERPOLATE}),
    "UpsamplingBilinear2d": _C({Op.INTERPOLATE}),
    "ZeroPad2d": _C({Op.PAD}),
    "ConstantPad2d": _C({Op.PAD}),
    "Flatten": _C({Op.FLATTEN}),
    "Dropout": _C({Op.DROPOUT}),
    "Identity": _C({Op.IDENTITY}),
    "PixelShuffle": _C({Op.PIXEL_SHUFFLE}),
    # the original's functional names, and ours
    **{op.value: _C({op}) for op in Op if op not in (Op.INPUT, Op.CONST, Op.GETITEM, Op.SIZE, Op.SCALAR, Op.ATEN)},
    "conv": _C(CONV_OPS),
    "dense": _C({Op.LINEAR}),
    "view": _C({Op.RESHAPE}),
    "concat": _C({Op.CAT}),
    "bmm": _C({Op.MATMUL}),
    "mm": _C({Op.MATMUL}),
    "upsample": _C({Op.INTERPOLATE}),
}


@dataclass(frozen=True)
class LayerRef:
    """One node as a layer rule sees it: its name, op, module path, module class and original scope path."""

    node: str = ""
    op: Op | None = None
    scope: str = ""
    module_type: type | None = None
    path: str | None = None


def scope_path(scope: str, module_types: Mapping[str, type]) -> str | None:
    """The original's scope path of a module path: "layer1.0.conv1" in a ResNet ->
    "ResNet/Sequential[layer1]/BasicBlock[0]/Conv2d[conv1]" (None when a module class is unknown)."""
    root = module_types.get("")
    if root is None:
        return None
    parts, prefix = [root.__name__], ""
    for part in scope.split(".") if scope else []:
        prefix = f"{prefix}.{part}" if prefix else part
        cls = module_types.get(prefix)
        if cls is None:
            return None
        parts.append(f"{cls.__name__}[{part}]")
    return "/".join(parts)


def _original(name: str) -> tuple[str, str] | None:
    """("node", name) or ("path", scope path) for a name in the original's `<Graph>::...` form, else None."""
    rest = name.split("::", 1)[1] if "::" in name else name
    if "/" not in rest:
        return ("node", rest) if "::" in name else None
    segments = rest.split("/")
    if not segments[-1].endswith("]") and len(segments) > 1:
        segments = segments[:-1]  # the TorchScript value name ("ret.3", "input.2")
    return "path", "/".join(segments)


def name_matches(layer_name: str, ref: LayerRef) -> bool:
    if layer_name == ref.node:
        return True
    if ref.scope and (ref.scope == layer_name or ref.scope.startswith(layer_name + ".")):
        return True
    original = _original(layer_name)
    if original is None:
        return False
    kind, value = original
    return value == ref.node if kind == "node" else ref.path is not None and value == ref.path


def type_matches(layer_type: str, ref: LayerRef) -> bool:
    name = layer_type.split(".")[-1]
    ops = TYPE_OPS.get(name)
    if ops is not None:
        return ref.op in ops if ref.op is not None else _module_is(ref, name)
    return _module_is(ref, name)


def _module_is(ref: LayerRef, name: str) -> bool:
    return ref.module_type is not None and ref.module_type.__name__ == name


def any_match(refs: Iterable[LayerRef], layer_type: str | None, layer_name: str | None) -> bool:
    if layer_name is not None:
        return any(name_matches(layer_name, r) for r in refs)
    return layer_type is not None and any(type_matches(layer_type, r) for r in refs)
