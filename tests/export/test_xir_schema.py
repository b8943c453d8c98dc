"""Our serial_v2 schema writes the field numbers of SPEC 5, checked with an independent wire decoder."""

from __future__ import annotations

import struct

from wire import decode

from pytorch_nndct.export.xir_schema import make_attr, schema


def test_field_numbers_follow_the_spec():
    s = schema()
    g = s.Graph(graph_name="CNN")
    node = g.op_node.add(op_name="CNN__conv", op_type="conv2d")
    node.op_attr["kernel"].CopyFrom(make_attr("int32_vec", [3, 3]))
    node.op_attr["fix_point"].CopyFrom(make_attr("int32", -2))
    node.op_attr["alpha"].CopyFrom(make_attr("float", 0.1015625))
    node.op_attr["data"].CopyFrom(make_attr("bytes", struct.pack("<2f", 0.5, -1.0)))
    node.op_attr["if_signed"].CopyFrom(make_attr("bool", True))
    node.op_attr["pad_mode"].CopyFrom(make_attr("string", "FLOOR"))
    node.args.add(arg_name="input", arg_ops=["CNN__input_0_fix"])
    t = node.output_tensor
    t.tensor_name, t.data_type, t.tensor_bit_width = "CNN__conv", 4, 32
    t.tensor_dim.extend([1, 14, 14, 8])
    g.subg_root.subgraph_name = "root"
    g.subg_root.op_name.append("CNN__conv")
    top = decode(g.SerializeToString())
    assert [(n, w) for n, w, _ in top] == [(1, 2), (5, 2), (10, 2)]
    assert top[0][2] == b"CNN"
    fields = decode(top[1][2])
    by_number = {}
    for n, _, v in fields:
        by_number.setdefault(n, []).append(v)
    assert by_number[1] == [b"CNN__conv"] and by_number[2] == [b"conv2d"]
    attrs = {}
    for entry in by_number[3]:  # map entries: key = 1, value = 2 (AttrValue)
        kv = {n: v for n, _, v in decode(entry)}
        attrs[kv[1].decode()] = decode(kv[2])
    assert attrs["kernel"][0][0] == 14 and decode(attrs["kernel"][0][2])[0][2] == bytes([3, 3])  # packed int32
    assert attrs["fix_point"][0][:2] == (5, 0) and attrs["fix_point"][0][2] == (1 << 64) - 2  # int32 -2
    assert attrs["alpha"][0][:2] == (9, 5) and struct.unpack("<f", attrs["alpha"][0][2])[0] == 0.1015625
    assert attrs["data"][0][0] == 12 and decode(attrs["data"][0][2])[0][2] == struct.pack("<2f", 0.5, -1.0)
    assert attrs["if_signed"][0][:3] == (4, 0, 1) and attrs["pad_mode"][0][0] == 11
    arg = decode(by_number[4][0])
    assert arg == [(1, 2, b"input"), (2, 2, b"CNN__input_0_fix")]
    tensor = {n: v for n, _, v in decode(by_number[5][0])}
    assert tensor[1] == b"CNN__conv" and tensor[2] == bytes([1, 14, 14, 8]) and tensor[5] == 4 and tensor[6] == 32
    root = decode(top[2][2])
    assert root == [(1, 2, b"root"), (3, 2, b"CNN__conv")]


def test_round_trip():
    s = schema()
    g = s.Graph(graph_name="M")
    g.op_node.add(op_name="a", op_type="data").op_attr["shape"].CopyFrom(make_attr("int32_vec", [1, 2, 2, 3]))
    parsed = s.Graph.FromString(g.SerializeToString())
    assert list(parsed.op_node[0].op_attr["shape"].int32_vec_value.value) == [1, 2, 2, 3]


def test_subgraph_children_and_attributes_use_the_spec_numbers():
    s = schema()
    g = s.Graph(graph_name="M")
    g.subg_root.subgraph_name = "root"
    g.subg_root.op_name.extend(["a", "b"])
    child = g.subg_root.subg_child.add(subgraph_name="subgraph_a")
    child.op_name.append("a")
    child.subg_attr["device"].CopyFrom(make_attr("string", "DPU"))
    (root,) = [v for n, _, v in decode(g.SerializeToString()) if n == 10]
    fields = decode(root)
    assert [(n, v) for n, _, v in fields if n in (1, 3)] == [(1, b"root"), (3, b"a"), (3, b"b")]
    (child_raw,) = [v for n, _, v in fields if n == 10]
    child_fields = decode(child_raw)
    assert child_fields[:2] == [(1, 2, b"subgraph_a"), (3, 2, b"a")]
    (entry,) = [v for n, _, v in child_fields if n == 5]  # map entry: key = 1, value = 2 (AttrValue)
    kv = {n: v for n, _, v in decode(entry)}
    assert kv[1] == b"device" and decode(kv[2]) == [(11, 2, b"DPU")]  # string_value = 11
