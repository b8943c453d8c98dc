"""Write a DeployGraph as `<Model>_int.xmodel`: the bare serialized `serial_v2.Graph` (SPEC 5).

With `devices` (graph node name -> "DPU" / "CPU" / "USER", e.g. from `pytorch_nndct.targets.assign_devices`), the
root subgraph gets one child per run of ops on one device, each with a string attribute `device`, as XIR's own
partition writes them. Ops are grouped by (device, number of device changes on the longest path to them), so the
children form an acyclic graph; ops with no device (shape arithmetic, unknown nodes) count as CPU.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from ..codegen import prepare_output_dir, write_atomic
from .deploy import DeployGraph, sanitize
from .xir_schema import make_attr, schema

__all__ = ["FLOAT", "serialize", "write_xmodel"]

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


def serialize(deploy: DeployGraph, devices: Mapping[str, str] | None = None) -> bytes:
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
    if devices is not None:
        for dev, names in _partition(deploy, devices):
            child = g.subg_root.subg_child.add(subgraph_name=f"subgraph_{names[0]}")
            child.op_name.extend(names)
            child.subg_attr["device"].CopyFrom(make_attr("string", dev))
    return g.SerializeToString(deterministic=True)  # maps in key order: same model, same bytes


def write_xmodel(deploy: DeployGraph, output_dir: str | os.PathLike, devices: Mapping[str, str] | None = None) -> Path:
    """Write `<Model>_int.xmodel`; `devices` (node name -> DPU / CPU / USER) adds the device subgraphs."""
    path = prepare_output_dir(output_dir) / f"{sanitize(deploy.name)}_int.xmodel"
    write_atomic({path: serialize(deploy, devices)})
    return path
