"""The ONNX graph under construction, and how each quantization point is written into it (SPEC 6).

Activation and input points (QuantizeLinear -> DequantizeLinear, `point`):
- power-of-two, signed 8 bits or fewer: uint8 with zero point 128 (the signed grid [-128, 127] * 2^-fp, the
  form onnxruntime fuses into integer kernels on x86); float step s: the same with scale s; unsigned or
  asymmetric float steps: uint8 with the point's zero point. A grid narrower than the stored type (fewer bits,
  narrow range) gets a Clip on the integers between the two.
- wider than 8 bits: the same arithmetic in float, Div -> Round -> Add zero point -> Clip -> Sub -> Mul
  (exact below 2^24; Round ties to even like QuantizeLinear).
- bfloat16 / float16: Cast to the type and back to float; float32: nothing.
Parameters (`weight`): uint8 initializers (signed symmetric 8-bit weights stored as q + 128 with zero point
128; unsigned or asymmetric as they are) or int32 (wider), followed by DequantizeLinear, per axis for
per-channel grids; float data types as the rounded values followed by a Cast pair. Biases (`bias`) are
int32 on the grid input step x weight step where the layer's weights and input are integer grids, so
onnxruntime can fuse conv / matmul into integer kernels.

Why uint8 weights: with uint8 activations and int8 weights onnxruntime picks its U8S8 kernels, which on x86
CPUs without VNNI (AVX2 only, e.g. AMD Zen 2/3) add pairs of u8 x s8 products in int16 with saturation: 20 to
100 LSB off the simulation at the default optimisation level (measured on digits, resnet18, mobilenet_v2).
Its U8U8 kernels accumulate exactly on every CPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from .._tables import registrar
from ..errors import NndctError
from ..ir.graph import Graph, Node
from ..ir.ops import Op
from ..quant.plan import QuantPlan
from ..quant.primitives import blockwise, int32_bias, quantize
from ..quant.scales import param_grid, quantize_param
from ..quant.spec import DataType, QuantSpec
from ..quant.table import QuantTable

__all__ = ["ONNX_LOWERINGS", "OnnxBuilder", "np_dtype", "onnx_dtype", "onnx_lowers"]

_CAST_TO = {DataType.BFLOAT16: 16, DataType.FLOAT16: 10}  # onnx.TensorProto.BFLOAT16 / FLOAT16


class OnnxBuilder:
    def __init__(self, graph: Graph, plan: QuantPlan, table: QuantTable, opset: int, dpu: bool = True) -> None:
        import onnx
        from onnx import helper

        self.onnx, self.helper = onnx, helper
        self.graph, self.plan, self.table, self.opset = graph, plan, table, opset
        self.dpu = dpu  # False: the float model (no DPU arithmetic anywhere)
        self.nodes: list = []
        self.inits: list = []
        self.init_names: set[str] = set()
        self.value: dict[str, str] = {}
        self.param_specs = {p.key: p.spec for p in plan.params}
        self.param_calibs = {p.key: p.calib for p in plan.params}
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

    def dpu_math(self, node: Node) -> bool:
        """Whether `node` computes the DPU's way (average pooling factor, hard-sigmoid, leaky slope), as the
        simulation does for every node but the float_ops (quant/runtime.py) and the float model."""
        return self.dpu and node.name not in self.plan.float_ops

    def inp(self, node: Node, k: int = 0) -> str:
        return self.value[node.inputs[k].name]

    def inp_as(self, node: Node, k: int, like: Node) -> str:
        """Input k cast to `like`'s data type where it differs (torch promotes bool * float, int + float)."""
        src, value = node.inputs[k], self.inp(node, k)
        want = getattr(like.meta, "dtype", None)
        if want is None or getattr(src.meta, "dtype", want) == want:
            return value
        return self.add("Cast", [value], f"{node.name}_in{k}_{want}", to=onnx_dtype(want))

    def ints(self, name: str, values: list[int]) -> str:
        """A 1-D int64 initializer (shapes, axes, starts and ends)."""
        return self.init(name, np.array(values, dtype=np.int64))

    def const(self, name: str, value: float | int | bool, like: Node) -> str:
        """A scalar initializer of `like`'s data type (ONNX does not promote types as torch does)."""
        return self.init(name, np.array(value, dtype=np_dtype(like)))

    # ------------------------------------------------------------------ activation and input points
    def output_spec(self, key: str) -> QuantSpec | None:
        """The format of output point `key` (from the plan) with its calibrated values (from the table)."""
        loaded = self.table.outputs.get(key)
        if loaded is None:
            return None
        spec = self.plan.outputs.get(key, loaded)
        return spec.with_fix_pos(loaded.fix_pos).with_scale(loaded.scale, loaded.zero_point)

    def qdq(self, src: str, bw: int, fp: int, name: str) -> str:
        """The signed power-of-two grid of `bw` bits at fix position `fp`."""
        return self.point(src, QuantSpec(bw, True, fix_pos=fp), name)

    def point(self, src: str, spec: QuantSpec, name: str) -> str:
        """`src` rounded onto the grid of `spec` (see the module docstring); uncalibrated points pass it on."""
        if not spec.is_int:
            if spec.dtype not in _CAST_TO:
                return src
            cast = self.add("Cast", [src], f"{name}_cast", to=_CAST_TO[spec.dtype])
            return self.add("Cast", [cast], f"{name}_float", to=1)
        if spec.scale is None and spec.fix_pos is None:
            return src
        step = spec.scale if spec.scale is not None else math.ldexp(1.0, -spec.fix_pos)
        signed = spec.signed and spec.symmetric
        zero = 128 if signed else spec.zero_point
        if spec.bitwidth > 8:
            return self._emulated(src, spec, step, name)
        zp = self.init(f"zero_uint8_{zero}", np.array(zero, dtype=np.uint8))
        scale = self.scale(spec.fix_pos) if spec.scale is None else self.init(f"{name}_scale", np.float32(step))
        q = self.add("QuantizeLinear", [src, scale, zp], f"{name}_q")
        lo, hi = (spec.qmin + 128, spec.qmax + 128) if signed else (spec.qmin, spec.qmax)
        if (lo, hi) != (0, 255):
            lo_u8 = self.init(f"u8_{lo}", np.array(lo, np.uint8))
            q = self.add("Clip", [q, lo_u8, self.init(f"u8_{hi}", np.array(hi, np.uint8))], f"{name}_range")
        out = self.add("DequantizeLinear", [q, scale, zp], f"{name}_dq")
        if signed and spec.scale is None and (lo, hi) == (0, 255):
            self.dq_source[out] = (q, spec.fix_pos)
        return out

    def _emulated(self, src: str, spec: QuantSpec, step: float, name: str) -> str:
        zero = spec.zero_point if spec.scale is not None else 0
        scale = self.init(f"{name}_scale", np.float32(step))
        y = self.add("Round", [self.add("Div", [src, scale], f"{name}_div")], f"{name}_round")
        if zero:
            y = self.add("Add", [y, self.init(f"{name}_zp", np.float32(zero))], f"{name}_addzp")
        lo, hi = self.init(f"{name}_qmin", np.float32(spec.qmin)), self.init(f"{name}_qmax", np.float32(spec.qmax))
        y = self.add("Clip", [y, lo, hi], f"{name}_clip")
        if zero:
            y = self.add("Sub", [y, f"{name}_zp"], f"{name}_subzp")
        return self.add("Mul", [y, scale], f"{name}_dq")

    def integer_clamp(self, node: Node, lo: float, hi: float) -> bool:
        """ReLU / ReLU6 / hardtanh on an already quantized input with the same fix position as its own
        point: Clip the uint8 values (exact when lo and hi are on the grid). The float Clip between a
        DequantizeLinear and a QuantizeLinear cost onnxruntime more than the int8 convolutions saved."""
        src = self.inp(node)
        key = self.plan.tensor_point.get(node.name)
        spec = self.output_spec(key) if key is not None else None
        if src not in self.dq_source or spec is None or spec.fix_pos is None or spec.scale is not None:
            return False
        if spec.fix_pos != self.dq_source[src][1] or spec.qmin != -128 or spec.qmax != 127:
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
        zp = self.init("zero_uint8_128", np.array(128, dtype=np.uint8))
        dq = self.add("DequantizeLinear", [out, self.scale(fp), zp], f"{node.name}_dq")
        self.dq_source[dq] = (out, fp)
        self.value[node.name] = dq
        return True

    # ------------------------------------------------------------------ parameters
    def param_spec(self, key: str) -> QuantSpec | None:
        spec = self.param_specs.get(key)
        loaded = self.table.params.get(key)
        if spec is None or loaded is None:
            return spec if spec is not None and (spec.derived or not spec.is_int) else None
        return spec.with_fix_pos(loaded.fix_pos)

    def weight(self, node: Node, role: str) -> str:
        key = node.params[role]
        if key not in self.done_params:
            t = self.graph.params[key].detach()
            if not t.is_floating_point():  # integer and boolean buffers (position ids, masks) as they are
                self.done_params[key] = self.init(key, t.cpu().numpy())
            else:
                self.done_params[key] = self._param(key, t.float())
        return self.done_params[key]

    def _param(self, key: str, t) -> str:  # t: torch.Tensor
        spec = self.param_spec(key)
        if spec is None or (spec.is_int and not spec.derived and spec.fix_pos is None):
            return self.init(key, t.numpy())
        if not spec.is_int:
            values = self.init(key, quantize_param(t, spec, self.param_calibs[key]).numpy())
            return self.point(values, spec, key)
        if spec.derived:
            scale, zp = param_grid(t, spec, self.param_calibs[key])
            q = quantize(t, spec, scale, zp)
            if not spec.per_channel:
                scale, zp = scale.reshape(()), zp.reshape(())
            else:
                scale, zp = scale.reshape(-1), zp.reshape(-1)
            return self._dq_init(key, q, scale.numpy().astype(np.float32), zp.numpy(), spec)
        if spec.bitwidth <= 8 and spec.signed and spec.symmetric:  # the DPU's int8 weights, stored as uint8 + 128
            u8 = blockwise(lambda x: (quantize(x, spec) + 128).to(torch.uint8), t)  # slices: no float copy held
            data = self.init(f"{key}_uint8", u8.numpy())
            zero = self.init("zero_uint8_128", np.array(128, dtype=np.uint8))
            return self.add("DequantizeLinear", [data, self.scale(spec.fix_pos), zero], f"{key}_dq")
        q = blockwise(lambda x: quantize(x, spec), t)
        return self._dq_init(key, q, np.array(math.ldexp(1.0, -spec.fix_pos), dtype=np.float32), np.array(0), spec)

    def _dq_init(self, key: str, q, scale: np.ndarray, zp: np.ndarray, spec: QuantSpec) -> str:
        """An integer initializer and its DequantizeLinear (int8, uint8, or int32 for wider grids)."""
        if spec.bitwidth > 8:
            dtype = np.int32
            if np.any(zp != 0):
                raise NndctError(f"{key}: a {spec.bitwidth}-bit grid with a zero point is not exported to ONNX yet")
        elif spec.signed and spec.symmetric:  # signed symmetric: uint8 + 128, as the DPU's weights above
            q, zp, dtype = torch.from_numpy(_as_u8(q.numpy())), zp + 128, np.uint8
        else:
            dtype = np.uint8
        suffix = np.dtype(dtype).name
        data = self.init(f"{key}_{suffix}", q.numpy().astype(dtype))
        s = self.init(f"{key}_scale", scale)
        z = self.init(f"{key}_zero", zp.astype(dtype))
        attrs = {"axis": spec.axis} if scale.ndim == 1 else {}
        return self.add("DequantizeLinear", [data, s, z], f"{key}_dq", **attrs)

    def input_step(self, x: Node) -> float | None:
        """The step of the integer grid the layer input `x` is on, or None."""
        key = self.plan.tensor_point.get(x.name)
        spec = self.output_spec(key) if key is not None else None
        if spec is None or not spec.is_int:
            return None
        if spec.scale is not None:
            return spec.scale
        return None if spec.fix_pos is None else math.ldexp(1.0, -spec.fix_pos)

    def bias(self, node: Node, x: Node) -> str | None:
        """The bias as int32 at the scale input x weight (exact for the usual shift_bias >= 0)."""
        if "bias" not in node.params:
            return None
        key, w_key = node.params["bias"], node.params["weight"]
        b_spec, w_spec = self.param_spec(key), self.param_spec(w_key)
        step_x = self.input_step(x)
        if w_spec is not None and w_spec.is_int and w_spec.float_scale and step_x is not None and b_spec is not None:
            if key not in self.done_params:  # int32 at input step x each channel's weight step (rounded)
                b = quantize_param(self.graph.params[key].detach().float(), b_spec, self.param_calibs[key])
                w_scales, _ = param_grid(self.graph.params[w_key].detach().float(), w_spec, self.param_calibs[w_key])
                q32, step = int32_bias(b, w_scales, step_x)
                q32, scales = q32.numpy().astype(np.int32), step.float()
                self.init(f"{key}_int32", q32)
                scale = self.init(f"{key}_scale32", scales.numpy() if w_spec.per_channel else np.float32(scales[0]))
                zero = self.init(f"{key}_zero32", np.zeros(q32.shape if w_spec.per_channel else (), np.int32))
                attrs = {"axis": 0} if w_spec.per_channel else {}
                self.done_params[key] = self.add("DequantizeLinear", [f"{key}_int32", scale, zero], f"{key}_dq32",
                                                 **attrs)  # fmt: skip
            return self.done_params[key]
        fp_b = b_spec.fix_pos if b_spec is not None and b_spec.is_int and not b_spec.derived else None
        fp_w = w_spec.fix_pos if w_spec is not None and w_spec.is_int and not w_spec.derived else None
        key_x = self.plan.tensor_point.get(x.name, "")
        x_spec = self.output_spec(key_x) if key_x else None
        fp_x = x_spec.fix_pos if x_spec is not None and x_spec.is_int and x_spec.scale is None else None
        if None in (fp_b, fp_w, fp_x) or fp_w + fp_x < fp_b:
            return self.weight(node, "bias")
        if key not in self.done_params:
            q = quantize(self.graph.params[key].detach().float(), b_spec)
            q32 = self.init(f"{key}_int32", (q.double() * 2.0 ** (fp_w + fp_x - fp_b)).numpy().astype(np.int32))
            scale = self.init(f"scale_{q32}", np.array(math.ldexp(1.0, -(fp_w + fp_x)), dtype=np.float32))
            self.done_params[key] = self.add("DequantizeLinear", [q32, scale, self.zero(np.int32)], f"{key}_dq32")
        return self.done_params[key]

    # ------------------------------------------------------------------ outputs
    def emit(self, node: Node, out: str) -> None:
        key = self.plan.tensor_point.get(node.name)
        if node.name in self.plan.outputs or self._feeds_group_relu(node):
            spec = self.output_spec(key)
            if spec is not None:
                out = self.point(out, spec, node.name)
        self.value[node.name] = out

    def _feeds_group_relu(self, node: Node) -> bool:
        """conv -> relu shares one point after the relu; quantizing before the relu as well gives the same
        values (relu and round commute, 0 and 6 are on the grid) and lets onnxruntime fuse DQ-conv-Q."""
        if len(node.users) != 1 or node.op in (Op.RELU, Op.RELU6):
            return False
        user = node.users[0]
        key = self.plan.tensor_point.get(node.name)
        spec = self.output_spec(key) if key is not None else None
        return user.op in (Op.RELU, Op.RELU6) and key == user.name and spec is not None and spec.is_int


OnnxLower = Callable[[OnnxBuilder, Node], None]
ONNX_LOWERINGS: dict[Op, OnnxLower] = {}  # filled by @onnx_lowers in onnx_qdq, onnx_ops and onnx_aten
onnx_lowers = registrar(ONNX_LOWERINGS)


def np_dtype(node: Node) -> np.dtype:
    """The numpy type of a node's tensor value (float32 where the capture recorded none)."""
    dtype = getattr(node.meta, "dtype", None) or "float32"
    return np.dtype("float32" if dtype == "bfloat16" else dtype)


def onnx_dtype(dtype: str) -> int:
    """The onnx.TensorProto type of one of our meta dtype names ('float32', 'int64', 'bool', ...)."""
    from onnx import TensorProto, helper

    if dtype == "bfloat16":
        return TensorProto.BFLOAT16
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def _as_u8(q: np.ndarray) -> np.ndarray:
    """Signed 8-bit integers as uint8 with zero point 128 (the same values)."""
    return (q.astype(np.int16) + 128).astype(np.uint8)
