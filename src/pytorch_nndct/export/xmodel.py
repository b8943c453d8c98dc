"""Write a DeployGraph as `<Model>_int.xmodel`: the bare serialized `serial_v2.Graph` (SPEC 5).

With `devices` (graph node name -> "DPU" / "CPU" / "USER", e.g. from `pytorch_nndct.targets.assign_devices`), the
root subgraph gets one child per run of ops on one device, each with a string attribute `device`, as XIR's own
partition writes them. Ops are grouped by (device, number of device changes on the longest path to them), so the
children form an acyclic graph; ops with no device (shape arithmetic, unknown nodes) count as CPU.

The file is written as a stream of pieces, one op at a time: each op is a small protobuf message, and the
bytes attributes (const data, as large as the weights) are framed by hand around the deploy graph's own
buffer, so no copy of the weights is made (a whole `Graph` message held the weights twice more: once in the
message, once serialized). The pieces parse to the message a whole `Graph` would hold, with every map's
entries in key order (as C++ protobuf writes them deterministically): same model, same bytes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ..codegen import prepare_output_dir, write_atomic
from ..errors import NndctError
from .deploy import DeployGraph, sanitize
from .xir_schema import make_attr, schema

__all__ = ["FLOAT", "serialize", "serialize_pieces", "write_xmodel"]

FLOAT = 4  # xir::DataType::Type


def _partition(deploy: DeployGraph, devices: Mapping[str, str]) -> list[tuple[str, list[str]]]:
    """(device, op names) of each child subgraph, in a topological order (by level, then first op)."""
    producer = {op.name: op for op in deploy.ops}
    level: dict[str, int] = {}
    device: dict[str, str] = {}
    groups: dict[tuple[str, int], list[str]] = {}
    for op in deploy.ops:
        device[op.name] = str(devices.get(op.node, "CPU"))
        level[op.name] = max(
            (level[i] + (device[i] != device[op.name]) for arg in op.args.values() for i in arg if i in producer),
            default=0,
        )
        groups.setdefault((device[op.name], level[op.name]), []).append(op.name)
    return [(dev, names) for (dev, _), names in sorted(groups.items(), key=lambda item: item[0][1])]


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _framed(number: int, pieces: list[Any]) -> list[Any]:
    """A length-delimited field `number` holding the concatenation of `pieces` (bytes-like)."""
    return [_varint(number << 3 | 2) + _varint(sum(len(p) for p in pieces)), *pieces]


_OP_ATTR, _OP_NODE, _ATTR_BYTES, _ENTRY_KEY, _ENTRY_VALUE = 3, 5, 12, 1, 2  # serial_v2 field numbers


def _bytes_attr(key: str, data: Any) -> list[Any]:
    """OPNode.op_attr[key] = AttrValue(bytes_value=Bytes(value=data)), framed around `data` itself."""
    value = memoryview(data).cast("B")
    payload = _framed(1, [value]) if len(value) else []  # proto3 leaves an empty value out
    entry = [*_framed(_ENTRY_KEY, [key.encode()]), *_framed(_ENTRY_VALUE, _framed(_ATTR_BYTES, payload))]
    return _framed(_OP_ATTR, entry)


def _op_node(s: Any, op: Any) -> list[Any]:
    """One op as the pieces of a Graph.op_node field: fields in number order, attributes in key order."""
    head = s.OPNode(op_name=op.name, op_type=op.type)
    pieces = [head.SerializeToString()]
    for key in sorted(op.attrs):
        kind, value = op.attrs[key]
        if kind == "bytes":
            pieces.extend(_bytes_attr(key, value))
        else:
            entry = s.OPNode()
            entry.op_attr[key].CopyFrom(make_attr(kind, value))
            pieces.append(entry.SerializeToString(deterministic=True))
    tail = s.OPNode()
    for arg_name, producers in op.args.items():
        tail.args.add(arg_name=arg_name, arg_ops=producers)
    t = tail.output_tensor
    t.tensor_name = op.name
    t.tensor_dim.extend(op.shape)
    t.data_type = FLOAT
    t.tensor_bit_width = 32
    pieces.append(tail.SerializeToString(deterministic=True))
    return _framed(_OP_NODE, pieces)


def serialize_pieces(deploy: DeployGraph, devices: Mapping[str, str] | None = None) -> Iterator[Any]:
    """The serialized `serial_v2.Graph`, as bytes-like pieces made one op at a time (see the module docstring)."""
    s = schema()
    yield s.Graph(graph_name=sanitize(deploy.name)).SerializeToString()
    for op in deploy.ops:
        yield from _op_node(s, op)
    g = s.Graph()
    g.subg_root.subgraph_name = "root"
    g.subg_root.op_name.extend(op.name for op in deploy.ops)
    if devices is not None:
        for dev, names in _partition(deploy, devices):
            child = g.subg_root.subg_child.add(subgraph_name=f"subgraph_{names[0]}")
            child.op_name.extend(names)
            child.subg_attr["device"].CopyFrom(make_attr("string", dev))
    yield g.SerializeToString(deterministic=True)  # maps in key order: same model, same bytes


def serialize(deploy: DeployGraph, devices: Mapping[str, str] | None = None) -> bytes:
    """The whole .xmodel in memory (tests, small models); write_xmodel streams the pieces instead."""
    return b"".join(serialize_pieces(deploy, devices))


PROTOBUF_LIMIT = 2**31 - 1  # bytes: a protobuf message (the whole .xmodel) cannot be parsed beyond this


def const_bytes(deploy: DeployGraph) -> int:
    """The bytes of the constants' data (XIR stores weights as float32 consts): most of the file."""
    return sum(
        len(value) for op in deploy.ops for _, value in op.attrs.values() if isinstance(value, bytes | bytearray)
    )


def write_xmodel(deploy: DeployGraph, output_dir: str | os.PathLike, devices: Mapping[str, str] | None = None) -> Path:
    """Write `<Model>_int.xmodel`; `devices` (node name -> DPU / CPU / USER) adds the device subgraphs."""
    size = const_bytes(deploy)
    if size >= PROTOBUF_LIMIT:
        raise NndctError(
            f"{deploy.name}: its constants take {size / 2**30:.2f} GiB as float32, as XIR stores them, and an "
            ".xmodel is one protobuf message, which nothing can read beyond 2 GiB (neither XIR nor our reader). "
            "Fix: export_onnx_model (it stores the weights as 8-bit integers, a quarter of the size), or deploy a "
            "smaller model."
        )
    path = prepare_output_dir(output_dir) / f"{sanitize(deploy.name)}_int.xmodel"
    write_atomic({path: serialize_pieces(deploy, devices)})
    return path
