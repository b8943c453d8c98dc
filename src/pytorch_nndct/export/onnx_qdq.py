"""ONNX export in QDQ form (SPEC 6).

Every quantization point is QuantizeLinear -> DequantizeLinear with scale 2^-fp; activations are written
as uint8 with zero point 128 (the same grid as int8 with zero point 0). Weights are int8 initializers
followed by DequantizeLinear; a bias is an int32 initializer at the scale input x weight (its 8-bit value
shifted, exact), so onnxruntime can fuse conv / matmul into integer kernels.

ONNX rounds ties to even where the DPU rounds half up, so outputs can differ from our simulation by one
LSB at exact ties. Ops with no ONNX lowering here are refused with the node's name.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from .._tables import registrar
from ..errors import NndctError
from ..ir.graph import Graph, Node, TensorMeta
from ..ir.ops import Op
from ..quant.dpu import HSIGMOID_M, HSIGMOID_S
from ..quant.plan import QuantPlan
from ..quant.primitives import avgpool_factor, fake_quantize, float_scales, int32_bias, quantize
from ..quant.table import QuantTable

__all__ = ["ONNX_LOWERINGS", "build_onnx"]

OPSET = 17


class _Builder:
    def __init__(self, graph: Graph, plan: QuantPlan, table: QuantTable) -> None:
        import onnx
        from onnx import helper

        self.onnx, self.helper = onnx, helper
        self.graph, self.plan, self.table = graph, plan, table
        self.nodes: list = []
        self.inits: list = []
        self.init_names: set[str] = set()
        self.value: dict[str, str] = {}
        self.param_specs = {p.key: p.spec for p in plan.params}
        self.done_params: dict[str, str] = {}
        self.pieces: dict[str, list[str]] = {}  # chunk / split node -> its output names
        self.dq_source: dict[str, tuple[str, int]] = {}  # DequantizeLinear output -> (its uint8 input, fp)

    # ------------------------------------------------------------------ helpers
    def init(self, name: str, array: np.ndarray) -> str:
        """An initializer; a name already taken is returned as it is (shared scales, zero points)."""
        if name not in self.init_names:
            self.init_names.add(name)
            self.inits.append(self.onnx.numpy_helper.from_array(array, name))
        return name

    def add(self, op_type: str, inputs: list[str], name: str, **attrs) -> str:
        self.nodes.append(self.helper.make_node(op_type, inputs, [name], name=name, **attrs))
        return name

    def scale(self, fp: int) -> str:
        return self.init(f"scale_2^-{fp}", np.array(math.ldexp(1.0, -fp), dtype=np.float32))

    def zero(self, dtype: type) -> str:
        return self.init(f"zero_{np.dtype(dtype).name}", np.array(0, dtype=dtype))

    def qdq(self, src: str, bw: int, fp: int, name: str) -> str:
        """Activations: the signed 8-bit grid [-128, 127] * 2^-fp written as uint8 with zero point 128 (the
        same values), the form onnxruntime fuses into integer kernels on x86."""
        if bw > 8:
            raise NndctError(f"{name}: ONNX export supports bit widths up to 8, got {bw}")
        zp = self.init("zero_uint8_128", np.array(128, dtype=np.uint8))
        q = self.add("QuantizeLinear", [src, self.scale(fp), zp], f"{name}_q")
        return self.dq(q, fp, f"{name}_dq")

    def dq(self, q: str, fp: int, name: str) -> str:
        zp = self.init("zero_uint8_128", np.array(128, dtype=np.uint8))
        out = self.add("DequantizeLinear", [q, self.scale(fp), zp], name)
        self.dq_source[out] = (q, fp)
        return out

    def integer_clamp(self, node: Node, lo: float, hi: float) -> bool:
        """ReLU / ReLU6 / hardtanh on an already quantized input with the same fix position as its own
        point: Clip the uint8 values (exact when lo and hi are on the grid). The float Clip between a
        DequantizeLinear and a QuantizeLinear cost onnxruntime more than the int8 convolutions saved."""
        src = self.inp(node)
        key = self.plan.tensor_point.get(node.name)
        spec = self.table.outputs.get(key) if key is not None else None
        if src not in self.dq_source or spec is None or spec.fix_pos != self.dq_source[src][1]:
            return False
        q, fp = self.dq_source[src]
        bounds = []
        for v in (lo, hi):
            scaled = v * 2.0**fp
            if math.isinf(scaled):
                bounds.append(0 if scaled < 0 else 255)
            elif not scaled.is_integer():
                return False
            else:
                bounds.append(min(255, max(0, 128 + int(scaled))))
        if len(node.inputs[0].users) == 1:  # the float view of the input is no longer needed
            self.nodes = [n for n in self.nodes if src not in n.output]
        lo_u8 = self.init(f"u8_{bounds[0]}", np.array(bounds[0], np.uint8))
        hi_u8 = self.init(f"u8_{bounds[1]}", np.array(bounds[1], np.uint8))
        out = self.add("Clip", [q, lo_u8, hi_u8], f"{node.name}_int")
        self.value[node.name] = self.dq(out, fp, f"{node.name}_dq")
        return True

    def weight(self, node: Node, role: str) -> str:
        key = node.params[role]
        if key not in self.done_params:
            t = self.graph.params[key].detach().float()
            spec = self.param_specs.get(key)
            fp = self.table.fix_pos(key)
            if spec is not None and spec.float_scale:  # CPU/GPU targets: int8 with float (per-channel) scales
                scales = float_scales(t, spec).reshape(-1).numpy().astype(np.float32)
                if not spec.per_channel:
                    scales = scales[0]
                self.init(f"{key}_int8", quantize(t, spec).numpy().astype(np.int8))
                self.init(f"{key}_scale", scales)
                self.init(f"{key}_zero", np.zeros(np.shape(scales), dtype=np.int8))
                attrs = {"axis": spec.axis} if spec.per_channel else {}
                dq_inputs = [f"{key}_int8", f"{key}_scale", f"{key}_zero"]
                self.done_params[key] = self.add("DequantizeLinear", dq_inputs, f"{key}_dq", **attrs)
            elif spec is None or fp is None:
                self.done_params[key] = self.init(key, t.numpy())
            else:
                q = quantize(t, spec.with_fix_pos(fp)).numpy().astype(np.int8)
                self.init(f"{key}_int8", q)
                dq_inputs = [f"{key}_int8", self.scale(fp), self.zero(np.int8)]
                self.done_params[key] = self.add("DequantizeLinear", dq_inputs, f"{key}_dq")
        return self.done_params[key]

    def bias(self, node: Node, x: Node) -> str | None:
        """The bias as int32 at the scale input x weight (exact for the usual shift_bias >= 0)."""
        if "bias" not in node.params:
            return None
        key = node.params["bias"]
        fp_b, fp_w = self.table.fix_pos(key), self.table.fix_pos(node.params["weight"])
        fp_x = self.table.fix_pos(self.plan.tensor_point.get(x.name, ""))
        w_spec = self.param_specs.get(node.params["weight"])
        if w_spec is not None and w_spec.float_scale and fp_b is not None and fp_x is not None:
            if key not in self.done_params:  # int32 at input scale x each channel's weight scale (rounded)
                b = fake_quantize(self.graph.params[key].detach().float(), self.param_specs[key].with_fix_pos(fp_b))
                w_scales = float_scales(self.graph.params[node.params["weight"]].detach().float(), w_spec)
                q32, step = int32_bias(b, w_scales, fp_x)
                q32, scales = q32.numpy().astype(np.int32), step.float()
                self.init(f"{key}_int32", q32)
                scale = self.init(f"{key}_scale32", scales.numpy() if w_spec.per_channel else np.float32(scales[0]))
                zero = self.init(f"{key}_zero32", np.zeros(q32.shape if w_spec.per_channel else (), np.int32))
                attrs = {"axis": 0} if w_spec.per_channel else {}
                self.done_params[key] = self.add("DequantizeLinear", [f"{key}_int32", scale, zero], f"{key}_dq32",
                                                 **attrs)  # fmt: skip
            return self.done_params[key]
        if None in (fp_b, fp_w, fp_x) or fp_w + fp_x < fp_b:
            return self.weight(node, "bias")
        if key not in self.done_params:
            q = quantize(self.graph.params[key].detach().float(), self.param_specs[key].with_fix_pos(fp_b))
            q32 = self.init(f"{key}_int32", (q.double() * 2.0 ** (fp_w + fp_x - fp_b)).numpy().astype(np.int32))
            scale = self.init(f"scale_{q32}", np.array(math.ldexp(1.0, -(fp_w + fp_x)), dtype=np.float32))
            self.done_params[key] = self.add("DequantizeLinear", [q32, scale, self.zero(np.int32)], f"{key}_dq32")
        return self.done_params[key]

    def emit(self, node: Node, out: str) -> None:
        key = self.plan.tensor_point.get(node.name)
        if node.name in self.plan.outputs or self._feeds_group_relu(node):
            spec = self.table.outputs[key]
            if spec.fix_pos is not None:
                out = self.qdq(out, spec.bitwidth, spec.fix_pos, node.name)
        self.value[node.name] = out

    def _feeds_group_relu(self, node: Node) -> bool:
        """conv -> relu shares one point after the relu; quantizing before the relu as well gives the same
        values (relu and round commute, 0 and 6 are on the grid) and lets onnxruntime fuse DQ-conv-Q."""
        if len(node.users) != 1 or node.op in (Op.RELU, Op.RELU6):
            return False
        user = node.users[0]
        key = self.plan.tensor_point.get(node.name)
        return user.op in (Op.RELU, Op.RELU6) and key is not None and key == user.name and key in self.table.outputs

    def inp(self, node: Node, k: int = 0) -> str:
        return self.value[node.inputs[k].name]


OnnxLower = Callable[[_Builder, Node], None]
ONNX_LOWERINGS: dict[Op, OnnxLower] = {}


onnx_lowers = registrar(ONNX_LOWERINGS)


@onnx_lowers(Op.CONST)
def _const(b: _Builder, node: Node) -> None:
    b.value[node.name] = b.weight(node, "value")


@onnx_lowers(Op.CONV1D, Op.CONV2D, Op.CONV3D)
def _conv(b: _Builder, node: Node) -> None:
    a = node.attrs
    if isinstance(a["padding"], str):
        raise NndctError(f"{node.where()}: string padding {a['padding']!r} is not exported to ONNX yet")
    w = b.weight(node, "weight")
    inputs = [b.inp(node), w] + ([bias] if (bias := b.bias(node, node.inputs[0])) else [])
    pads = list(a["padding"]) * 2
    out = b.add("Conv", inputs, node.name, strides=list(a["stride"]), pads=pads, dilations=list(a["dilation"]),
                group=a["groups"])  # fmt: skip
    b.emit(node, out)


@onnx_lowers(Op.LINEAR)
def _linear(b: _Builder, node: Node) -> None:
    w = b.weight(node, "weight")
    wt = b.add("Transpose", [w], f"{node.name}_wT", perm=[1, 0])
    out = b.add("MatMul", [b.inp(node), wt], f"{node.name}_mm")
    bias = b.bias(node, node.inputs[0])
    if bias:
        out = b.add("Add", [out, bias], node.name)
    b.emit(node, out)


@onnx_lowers(Op.CHANNEL_SCALE)
def _channel_scale(b: _Builder, node: Node) -> None:
    rank = len(node.meta.shape)
    shape = np.array([1, -1] + [1] * (rank - 2), dtype=np.int64)
    sh = b.init(f"{node.name}_shape", shape)
    s = b.add("Reshape", [b.weight(node, "weight"), sh], f"{node.name}_s")
    t = b.add("Reshape", [b.weight(node, "bias"), sh], f"{node.name}_t")
    b.emit(node, b.add("Add", [b.add("Mul", [b.inp(node), s], f"{node.name}_mul"), t], node.name))


_BINARY = {Op.ADD: "Add", Op.SUB: "Sub", Op.MUL: "Mul", Op.DIV: "Div"}


@onnx_lowers(*_BINARY)
def _binary(b: _Builder, node: Node) -> None:
    a = node.attrs
    if a.get("alpha", 1) != 1 or a.get("rounding_mode") is not None:
        raise NndctError(f"{node.where()}: {node.op.value} with alpha/rounding_mode is not exported to ONNX yet")
    other = b.value[node.inputs[1].name] if a["other"] is None else b.init(
        f"{node.name}_other", np.array(a["other"], dtype=np.float32))  # fmt: skip
    b.emit(node, b.add(_BINARY[node.op], [b.inp(node), other], node.name))


_UNARY = {Op.RELU: "Relu", Op.SIGMOID: "Sigmoid", Op.TANH: "Tanh"}


@onnx_lowers(*_UNARY)
def _unary(b: _Builder, node: Node) -> None:
    if node.op is Op.RELU and b.integer_clamp(node, 0.0, math.inf):
        return
    b.emit(node, b.add(_UNARY[node.op], [b.inp(node)], node.name))


def _clip(b: _Builder, src: str, lo: float, hi: float, name: str) -> str:
    lo_name = b.init(f"{name}_lo", np.array(lo, np.float32))
    return b.add("Clip", [src, lo_name, b.init(f"{name}_hi", np.array(hi, np.float32))], name)


@onnx_lowers(Op.RELU6, Op.HARDTANH)
def _clamp(b: _Builder, node: Node) -> None:
    lo, hi = (0.0, 6.0) if node.op is Op.RELU6 else (node.attrs["min_val"], node.attrs["max_val"])
    if not b.integer_clamp(node, lo, hi):
        b.emit(node, _clip(b, b.inp(node), lo, hi, node.name))


@onnx_lowers(Op.LEAKY_RELU)
def _leaky(b: _Builder, node: Node) -> None:
    b.emit(node, b.add("LeakyRelu", [b.inp(node)], node.name, alpha=26 / 256))


def _hsig(b: _Builder, src: str, name: str) -> str:
    three = b.init(f"{name}_three", np.array(3.0, np.float32))
    k = b.init(f"{name}_k", np.array(HSIGMOID_M / 2**HSIGMOID_S, np.float32))
    return b.add("Mul", [_clip(b, b.add("Add", [src, three], f"{name}_add"), 0.0, 6.0, f"{name}_r6"), k], name)


@onnx_lowers(Op.HARDSIGMOID)
def _hardsigmoid(b: _Builder, node: Node) -> None:
    b.emit(node, _hsig(b, b.inp(node), node.name))


@onnx_lowers(Op.HARDSWISH)
def _hardswish(b: _Builder, node: Node) -> None:
    h = b.qdq(_hsig(b, b.inp(node), f"{node.name}_hsig"), 8, 7, f"{node.name}_hsig")
    b.emit(node, b.add("Mul", [b.inp(node), h], node.name))


@onnx_lowers(Op.CAT)
def _cat(b: _Builder, node: Node) -> None:
    b.emit(node, b.add("Concat", [b.value[i.name] for i in node.inputs], node.name, axis=node.attrs["dim"]))


@onnx_lowers(Op.MAX_POOL2D)
def _maxpool(b: _Builder, node: Node) -> None:
    a = node.attrs
    out = b.add("MaxPool", [b.inp(node)], node.name, kernel_shape=list(a["kernel_size"]), strides=list(a["stride"]),
                pads=list(a["padding"]) * 2, dilations=list(a["dilation"]), ceil_mode=int(a["ceil_mode"]))  # fmt: skip
    b.emit(node, out)


def _dpu_avg(b: _Builder, node: Node, pooled: str, k: int) -> None:
    m, s = avgpool_factor(k)
    factor = b.init(f"{node.name}_factor", np.array(k * m / 2**s, np.float32))
    b.emit(node, b.add("Mul", [pooled, factor], node.name))


@onnx_lowers(Op.AVG_POOL2D)
def _avgpool(b: _Builder, node: Node) -> None:
    a = node.attrs
    if a["divisor_override"] is not None:
        raise NndctError(f"{node.where()}: average pooling with divisor_override is not exported to ONNX")
    pooled = b.add("AveragePool", [b.inp(node)], f"{node.name}_avg", kernel_shape=list(a["kernel_size"]),
                   strides=list(a["stride"]), pads=list(a["padding"]) * 2, ceil_mode=int(a["ceil_mode"]),
                   count_include_pad=int(a["count_include_pad"]))  # fmt: skip
    _dpu_avg(b, node, pooled, a["kernel_size"][0] * a["kernel_size"][1])


@onnx_lowers(Op.ADAPTIVE_AVG_POOL2D)
def _adaptive(b: _Builder, node: Node) -> None:
    h, w = node.inputs[0].meta.shape[2:]
    oh, ow = node.meta.shape[2:]
    if (oh, ow) != (1, 1) or not isinstance(h, int) or not isinstance(w, int):
        raise NndctError(f"{node.where()}: adaptive average pooling to {oh}x{ow} is not exported to ONNX yet")
    _dpu_avg(b, node, b.add("GlobalAveragePool", [b.inp(node)], f"{node.name}_avg"), h * w)


@onnx_lowers(Op.FLATTEN)
def _flatten(b: _Builder, node: Node) -> None:
    a = node.attrs
    rank = len(node.inputs[0].meta.shape)
    if a["start_dim"] != 1 or a["end_dim"] not in (-1, rank - 1):
        raise NndctError(f"{node.where()}: flatten({a['start_dim']}, {a['end_dim']}) is not exported to ONNX yet")
    b.emit(node, b.add("Flatten", [b.inp(node)], node.name, axis=1))


@onnx_lowers(Op.SOFTMAX)
def _softmax(b: _Builder, node: Node) -> None:
    b.emit(node, b.add("Softmax", [b.inp(node)], node.name, axis=node.attrs["dim"]))


@onnx_lowers(Op.PERMUTE)
def _permute(b: _Builder, node: Node) -> None:
    b.emit(node, b.add("Transpose", [b.inp(node)], node.name, perm=list(node.attrs["dims"])))


def build_onnx(graph: Graph, plan: QuantPlan, table: QuantTable, quantized: bool = True):  # -> onnx.ModelProto
    """The QDQ ONNX model of a calibrated graph (batch dimension dynamic where it was captured so).

    With `quantized=False` the same graph is written in float (no Q/DQ): a baseline for benchmarks.
    """
    if not quantized:
        plan, table = QuantPlan(), QuantTable(graph.name)
    try:
        import onnx
        from onnx import TensorProto, helper
    except ImportError as exc:
        raise NndctError("ONNX export needs the onnx package: pip install onnx") from exc
    b = _Builder(graph, plan, table)
    graph_inputs, graph_outputs = [], []
    for node in graph.nodes:
        if node.op is Op.INPUT:
            dims = ["batch" if d == "B" else d for d in node.meta.shape]
            graph_inputs.append(helper.make_tensor_value_info(node.name, TensorProto.FLOAT, dims))
            b.value[node.name] = node.name
            b.emit(node, node.name)
            continue
        if node.op in (Op.SIZE, Op.SCALAR):
            continue
        fn = ONNX_LOWERINGS.get(node.op)
        if fn is None:
            raise NndctError(
                f"{node.where()}: {node.op.value} has no ONNX lowering yet, so the model cannot be exported to ONNX. "
                "The .xmodel export writes such ops as custom ops."
            )
        fn(b, node)
    for k, node in enumerate(graph.output_nodes):
        if not isinstance(node.meta, TensorMeta):
            raise NndctError(f"{node.where()}: only tensor outputs can be exported to ONNX")
        name = f"output_{k}"
        b.add("Identity", [b.value[node.name]], name)
        dims = ["batch" if d == "B" else d for d in node.meta.shape]
        graph_outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, dims))
    onnx_graph = helper.make_graph(b.nodes, graph.name, graph_inputs, graph_outputs, b.inits)
    opsets = [helper.make_opsetid("", OPSET)]
    if any(n.domain == CUSTOM_DOMAIN for n in b.nodes):
        opsets.append(helper.make_opsetid(CUSTOM_DOMAIN, 1))
    model = helper.make_model(onnx_graph, opset_imports=opsets, producer_name="pytorch_nndct")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _int64(b: _Builder, name: str, values: list[int]) -> str:
    return b.init(name, np.array(values, dtype=np.int64))


@onnx_lowers(Op.RESHAPE, Op.UNSQUEEZE, Op.SQUEEZE, Op.CONTIGUOUS)
def _reshape(b: _Builder, node: Node) -> None:
    dims = node.meta.shape
    if sum(not isinstance(d, int) for d in dims) > 1:
        raise NndctError(f"{node.where()}: a reshape to {dims} has more than one symbolic dimension")
    shape = _int64(b, f"{node.name}_shape", [d if isinstance(d, int) else -1 for d in dims])
    b.emit(node, b.add("Reshape", [b.inp(node), shape], node.name))


@onnx_lowers(Op.TRANSPOSE)
def _transpose(b: _Builder, node: Node) -> None:
    rank = len(node.meta.shape)
    perm = list(range(rank))
    d0, d1 = node.attrs["dim0"] % rank, node.attrs["dim1"] % rank
    perm[d0], perm[d1] = perm[d1], perm[d0]
    b.emit(node, b.add("Transpose", [b.inp(node)], node.name, perm=perm))


@onnx_lowers(Op.SLICE)
def _slice(b: _Builder, node: Node) -> None:
    a = node.attrs
    if any(not isinstance(v, int | None) for v in (a["start"], a["end"])):
        raise NndctError(f"{node.where()}: a slice with symbolic bounds is not exported to ONNX yet")
    start = 0 if a["start"] is None else a["start"]
    end = 2**62 if a["end"] is None else a["end"]
    inputs = [b.inp(node)] + [_int64(b, f"{node.name}_{k}", [v]) for k, v in
                              (("starts", start), ("ends", end), ("axes", a["dim"]), ("steps", a["step"]))]  # fmt: skip
    b.emit(node, b.add("Slice", inputs, node.name))


@onnx_lowers(Op.CHUNK, Op.SPLIT)
def _split(b: _Builder, node: Node) -> None:
    """One Split; each getitem reads one of its outputs (quantized with the chunk's point, if it has one)."""
    size = node.inputs[0].meta.shape[node.attrs["dim"]]
    if not isinstance(size, int):
        raise NndctError(f"{node.where()}: splitting a symbolic dimension is not exported to ONNX yet")
    if node.op is Op.CHUNK:
        step = -(-size // node.attrs["chunks"])
    else:
        step = node.attrs["split_size"]
    sizes = list(step) if isinstance(step, list) else [min(step, size - k) for k in range(0, size, step)]
    outs = [f"{node.name}_{k}" for k in range(len(sizes))]
    split = _int64(b, f"{node.name}_sizes", sizes)
    b.nodes.append(b.helper.make_node("Split", [b.inp(node), split], outs, name=node.name, axis=node.attrs["dim"]))
    b.value[node.name] = node.name  # read only through getitem
    b.pieces[node.name] = outs


@onnx_lowers(Op.GETITEM)
def _getitem(b: _Builder, node: Node) -> None:
    parent = node.inputs[0]
    if parent.name not in b.pieces:
        raise NndctError(f"{node.where()}: element of {parent.op.value} is not exported to ONNX yet")
    out = b.pieces[parent.name][node.attrs["index"]]
    if parent.name in b.plan.outputs:
        spec = b.table.outputs[b.plan.tensor_point[parent.name]]
        if spec.fix_pos is not None:
            out = b.qdq(out, spec.bitwidth, spec.fix_pos, node.name)
    b.value[node.name] = out


@onnx_lowers(Op.INTERPOLATE)
def _resize(b: _Builder, node: Node) -> None:
    a = node.attrs
    if a["mode"] not in ("nearest", "bilinear") or len(node.meta.shape) != 4:
        raise NndctError(f"{node.where()}: {a['mode']} resampling is not exported to ONNX yet")
    (h, w), (oh, ow) = node.inputs[0].meta.shape[2:], node.meta.shape[2:]
    scales = b.init(f"{node.name}_scales", np.array([1.0, 1.0, oh / h, ow / w], dtype=np.float32))
    if a["mode"] == "nearest":
        attrs = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}
    else:
        ctm = "align_corners" if a["align_corners"] else "pytorch_half_pixel"
        attrs = {"mode": "linear", "coordinate_transformation_mode": ctm}
    b.emit(node, b.add("Resize", [b.inp(node), "", scales], node.name, **attrs))


@onnx_lowers(Op.PAD)
def _pad(b: _Builder, node: Node) -> None:
    a = node.attrs
    rank = len(node.meta.shape)
    if a["mode"] != "constant":
        raise NndctError(f"{node.where()}: {a['mode']} padding is not exported to ONNX yet")
    begin, end = [0] * rank, [0] * rank
    for k in range(len(a["pad"]) // 2):  # torch lists the last dimension first
        begin[rank - 1 - k], end[rank - 1 - k] = a["pad"][2 * k], a["pad"][2 * k + 1]
    pads = _int64(b, f"{node.name}_pads", begin + end)
    value = b.init(f"{node.name}_value", np.array(float(a["value"] or 0.0), dtype=np.float32))
    b.emit(node, b.add("Pad", [b.inp(node), pads, value], node.name, mode="constant"))


CUSTOM_DOMAIN = "pytorch_nndct.custom"


@onnx_lowers(Op.CUSTOM)
def _custom(b: _Builder, node: Node) -> None:
    """A register_custom_op op: a node of its op_type in our custom domain, with its named attributes (the
    runtime needs the user's implementation, as on the DPU's CPU side)."""
    attrs = {k: list(v) if isinstance(v, tuple) else v for k, v in node.attrs["op_attrs"].items()}
    inputs = [b.value[i.name] for i in node.inputs]
    b.nodes.append(
        b.helper.make_node(node.attrs["op_type"], inputs, [node.name], name=node.name, domain=CUSTOM_DOMAIN, **attrs)
    )
    b.emit(node, node.name)
