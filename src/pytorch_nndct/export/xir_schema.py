"""Our own protobuf schema of XIR's `serial_v2` format (SPEC 5, XIR_OPS.md section 8), built at run time.

No .proto file and no protoc: the message types are described with descriptor_pb2 from the field table
and turned into classes by the protobuf runtime. Only what a quantizer-level .xmodel needs is declared
(op_defs and the map-valued AttrValue members are not: we never write them).
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

__all__ = ["AttrKind", "Schema", "make_attr", "schema"]

_PACKAGE = "serial_v2"
_F = descriptor_pb2.FieldDescriptorProto

# AttrValue oneof members we write: kind -> (field name, number, scalar type or vector message)
_SCALARS = {
    "bool": ("bool_value", 4, _F.TYPE_BOOL),
    "int32": ("int32_value", 5, _F.TYPE_INT32),
    "uint32": ("uint32_value", 6, _F.TYPE_UINT32),
    "int64": ("int64_value", 7, _F.TYPE_INT64),
    "uint64": ("uint64_value", 8, _F.TYPE_UINT64),
    "float": ("float_value", 9, _F.TYPE_FLOAT),
    "double": ("double_value", 10, _F.TYPE_DOUBLE),
    "string": ("string_value", 11, _F.TYPE_STRING),
}
_VECTORS = {
    "bool_vec": ("bool_vec_value", 13, "BoolVec", _F.TYPE_BOOL),
    "int32_vec": ("int32_vec_value", 14, "Int32Vec", _F.TYPE_INT32),
    "uint32_vec": ("uint32_vec_value", 15, "Uint32Vec", _F.TYPE_UINT32),
    "int64_vec": ("int64_vec_value", 16, "Int64Vec", _F.TYPE_INT64),
    "uint64_vec": ("uint64_vec_value", 17, "Uint64Vec", _F.TYPE_UINT64),
    "float_vec": ("float_vec_value", 18, "FloatVec", _F.TYPE_FLOAT),
    "double_vec": ("double_vec_value", 19, "DoubleVec", _F.TYPE_DOUBLE),
    "string_vec": ("string_vec_value", 20, "StringVec", _F.TYPE_STRING),
}
AttrKind = str  # one of _SCALARS, _VECTORS, or "bytes"


def _field(msg: Any, name: str, number: int, ftype: int, *, repeated: bool = False, type_name: str = "",
           oneof: int | None = None) -> None:  # fmt: skip
    f = msg.field.add(name=name, number=number, type=ftype)
    f.label = _F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL
    if type_name:
        f.type_name = f".{_PACKAGE}.{type_name}"
    if oneof is not None:
        f.oneof_index = oneof


def _map_field(msg: Any, name: str, number: int) -> None:
    entry_name = "".join(p.capitalize() for p in name.split("_")) + "Entry"
    entry = msg.nested_type.add(name=entry_name)
    entry.options.map_entry = True
    _field(entry, "key", 1, _F.TYPE_STRING)
    _field(entry, "value", 2, _F.TYPE_MESSAGE, type_name="AttrValue")
    f = msg.field.add(name=name, number=number, type=_F.TYPE_MESSAGE, label=_F.LABEL_REPEATED)
    f.type_name = f".{_PACKAGE}.{msg.name}.{entry_name}"


def _file() -> descriptor_pb2.FileDescriptorProto:
    fp = descriptor_pb2.FileDescriptorProto(name="pytorch_nndct_serial_v2.proto", package=_PACKAGE, syntax="proto3")
    b = fp.message_type.add(name="Bytes")
    _field(b, "value", 1, _F.TYPE_BYTES)
    bv = fp.message_type.add(name="BytesVec")
    _field(bv, "value", 1, _F.TYPE_MESSAGE, repeated=True, type_name="Bytes")
    for _, _, msg_name, elem in _VECTORS.values():
        _field(fp.message_type.add(name=msg_name), "value", 1, elem, repeated=True)
    attr = fp.message_type.add(name="AttrValue")
    attr.oneof_decl.add(name="value")
    for name, number, ftype in _SCALARS.values():
        _field(attr, name, number, ftype, oneof=0)
    _field(attr, "bytes_value", 12, _F.TYPE_MESSAGE, type_name="Bytes", oneof=0)
    for name, number, msg_name, _ in _VECTORS.values():
        _field(attr, name, number, _F.TYPE_MESSAGE, type_name=msg_name, oneof=0)
    _field(attr, "bytes_vec_value", 21, _F.TYPE_MESSAGE, type_name="BytesVec", oneof=0)
    arg = fp.message_type.add(name="OpArg")
    _field(arg, "arg_name", 1, _F.TYPE_STRING)
    _field(arg, "arg_ops", 2, _F.TYPE_STRING, repeated=True)
    tensor = fp.message_type.add(name="Tensor")
    _field(tensor, "tensor_name", 1, _F.TYPE_STRING)
    _field(tensor, "tensor_dim", 2, _F.TYPE_UINT32, repeated=True)
    _field(tensor, "data_type", 5, _F.TYPE_INT32)
    _field(tensor, "tensor_bit_width", 6, _F.TYPE_INT32)
    _map_field(tensor, "tensor_attr", 10)
    node = fp.message_type.add(name="OPNode")
    _field(node, "op_name", 1, _F.TYPE_STRING)
    _field(node, "op_type", 2, _F.TYPE_STRING)
    _map_field(node, "op_attr", 3)
    _field(node, "args", 4, _F.TYPE_MESSAGE, repeated=True, type_name="OpArg")
    _field(node, "output_tensor", 5, _F.TYPE_MESSAGE, type_name="Tensor")
    sub = fp.message_type.add(name="SubGraph")
    _field(sub, "subgraph_name", 1, _F.TYPE_STRING)
    _field(sub, "op_name", 3, _F.TYPE_STRING, repeated=True)
    _map_field(sub, "subg_attr", 5)
    _field(sub, "subg_child", 10, _F.TYPE_MESSAGE, repeated=True, type_name="SubGraph")
    graph = fp.message_type.add(name="Graph")
    _field(graph, "graph_name", 1, _F.TYPE_STRING)
    _field(graph, "op_node", 5, _F.TYPE_MESSAGE, repeated=True, type_name="OPNode")
    _field(graph, "subg_root", 10, _F.TYPE_MESSAGE, type_name="SubGraph")
    _map_field(graph, "graph_attr", 11)
    return fp


@dataclass(frozen=True)
class Schema:
    """The message classes of serial_v2."""

    Graph: Any
    OPNode: Any
    OpArg: Any
    Tensor: Any
    SubGraph: Any
    AttrValue: Any


@functools.cache
def schema() -> Schema:
    pool = descriptor_pool.DescriptorPool()
    pool.Add(_file())

    def cls(name: str) -> Any:
        return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.{name}"))

    return Schema(*(cls(n) for n in ("Graph", "OPNode", "OpArg", "Tensor", "SubGraph", "AttrValue")))


def make_attr(kind: AttrKind, value: Any) -> Any:
    """An AttrValue holding `value` in the member `kind` ('int32', 'int32_vec', 'bytes', ...)."""
    attr = schema().AttrValue()
    if kind in _SCALARS:
        name, _, ftype = _SCALARS[kind]
        if ftype == _F.TYPE_FLOAT:
            value = struct.unpack("<f", struct.pack("<f", value))[0]
        setattr(attr, name, value)
    elif kind in _VECTORS:
        getattr(attr, _VECTORS[kind][0]).value.extend(list(value))
    elif kind == "bytes":
        attr.bytes_value.value = bytes(value)
    else:
        raise ValueError(f"unknown XIR attribute kind {kind!r}")
    return attr
