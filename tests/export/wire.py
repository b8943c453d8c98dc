"""A minimal protobuf wire decoder and a reader of serial_v2 files built on it (independent of our schema)."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos


def decode(buf: bytes) -> list[tuple[int, int, object]]:
    """(field number, wire type, raw value) of each top-level field of one message."""
    out, pos = [], 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        else:
            raise AssertionError(f"unexpected wire type {wire}")
        out.append((number, wire, value))
    return out


def _packed_varints(raw: bytes) -> list[int]:
    vals, pos = [], 0
    while pos < len(raw):
        v, pos = _varint(raw, pos)
        vals.append(v - (1 << 64) if v >= 1 << 63 else v)
    return vals


def attr_value(raw: bytes):
    """Decode an AttrValue (the members a quantizer writes) to a Python value."""
    ((number, _wire, value),) = decode(raw)
    if number == 4:
        return bool(value)
    if number == 5:
        return value - (1 << 64) if value >= 1 << 63 else value
    if number == 9:
        return struct.unpack("<f", value)[0]
    if number == 11:
        return value.decode()
    if number == 12:
        inner = decode(value)
        return inner[0][2] if inner else b""
    if number == 14:
        inner = decode(value)
        return _packed_varints(inner[0][2]) if inner else []
    if number == 18:
        inner = decode(value)
        return list(struct.unpack(f"<{len(inner[0][2]) // 4}f", inner[0][2])) if inner else []
    raise AssertionError(f"AttrValue member {number} not expected in a quantizer file")


@dataclass
class XNode:
    name: str
    type: str
    attrs: dict = field(default_factory=dict)
    args: dict = field(default_factory=dict)
    dims: list = field(default_factory=list)
    data_type: int = -1


def read_graph(buf: bytes) -> tuple[str, list[XNode], list[str]]:
    """(graph name, ops in file order, root subgraph's op names)."""
    name, nodes, root = "", [], []
    for number, _, value in decode(buf):
        if number == 1:
            name = value.decode()
        elif number == 5:
            node = XNode("", "")
            for n, _, v in decode(value):
                if n == 1:
                    node.name = v.decode()
                elif n == 2:
                    node.type = v.decode()
                elif n == 3:
                    kv = {k: x for k, _, x in decode(v)}
                    node.attrs[kv[1].decode()] = attr_value(kv[2])
                elif n == 4:
                    fields = decode(v)
                    arg = next(x.decode() for k, _, x in fields if k == 1)
                    node.args[arg] = [x.decode() for k, _, x in fields if k == 2]
                elif n == 5:
                    for k, w, x in decode(v):
                        if k == 2:
                            node.dims = _packed_varints(x) if w == 2 else [*node.dims, x]
                        elif k == 5:
                            node.data_type = x
                        elif k == 1:
                            assert x.decode() == node.name, "tensor name must equal the op name"
            nodes.append(node)
        elif number == 10:
            root = [v.decode() for k, _, v in decode(value) if k == 3]
    return name, nodes, root


@dataclass
class XSubgraph:
    name: str
    ops: list = field(default_factory=list)
    attrs: dict = field(default_factory=dict)
    children: list = field(default_factory=list)


def _subgraph(buf: bytes) -> XSubgraph:
    sub = XSubgraph("")
    for number, _, value in decode(buf):
        if number == 1:
            sub.name = value.decode()
        elif number == 3:
            sub.ops.append(value.decode())
        elif number == 5:
            kv = {k: x for k, _, x in decode(value)}
            sub.attrs[kv[1].decode()] = attr_value(kv[2])
        elif number == 10:
            sub.children.append(_subgraph(value))
    return sub


def read_root(buf: bytes) -> XSubgraph:
    """The root subgraph (field 10 of Graph) with its children, their attributes and op names."""
    ((value,),) = [(v,) for n, _, v in decode(buf) if n == 10]
    return _subgraph(value)
