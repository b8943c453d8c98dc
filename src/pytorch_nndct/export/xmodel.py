"""Write a DeployGraph as `<Model>_int.xmodel`: the bare serialized `serial_v2.Graph` (SPEC 5)."""

from __future__ import annotations

import os
from pathlib import Path

from ..codegen import prepare_output_dir, write_atomic
from .deploy import DeployGraph, sanitize
from .xir_schema import make_attr, schema

__all__ = ["FLOAT", "serialize", "write_xmodel"]

FLOAT = 4  # xir::DataType::Type


def serialize(deploy: DeployGraph) -> bytes:
    s = schema()
    g = s.Graph(graph_name=sanitize(deploy.name))
    for op in deploy.ops:
        node = g.op_node.add(op_name=op.name, op_type=op.type)
        for key, (kind, value) in op.attrs.items():
            node.op_attr[key].CopyFrom(make_attr(kind, value))
        for arg_name, producers in op.args.items():
            node.args.add(arg_name=arg_name, arg_ops=producers)
        t = node.output_tensor
        t.tensor_name = op.name
        t.tensor_dim.extend(op.shape)
        t.data_type = FLOAT
        t.tensor_bit_width = 32
    g.subg_root.subgraph_name = "root"
    g.subg_root.op_name.extend(op.name for op in deploy.ops)
    return g.SerializeToString(deterministic=True)  # maps in key order: same model, same bytes


def write_xmodel(deploy: DeployGraph, output_dir: str | os.PathLike) -> Path:
    path = prepare_output_dir(output_dir) / f"{sanitize(deploy.name)}_int.xmodel"
    write_atomic({path: serialize(deploy)})
    return path
