"""DPU targets: the target table, the rules that assign each op to the DPU or the CPU, and the Inspector.

- `get_target("DPUCZDX8G_ISA1_B4096")`, or by fingerprint `get_target("0x0101000056010407")`;
- `assign_devices(graph, "DPUCAHX8H_ISA2")`: node name -> Assignment(device, reasons, engine);
- `cpu_ops(graph, target)`: node name -> reason, for the ops that stay float;
- `Inspector("DPUCZDX8G_ISA1_B4096").inspect(model, (x,), image_format="svg")`.
"""

from .assign import Assignment, Device, assign_devices, cpu_ops
from .inspector import Inspection, Inspector
from .table import Target, UnknownTargetError, all_targets, decode_dpuczdx8g_isa1, get_target, list_targets

__all__ = [
    "Assignment",
    "Device",
    "Inspection",
    "Inspector",
    "Target",
    "UnknownTargetError",
    "all_targets",
    "assign_devices",
    "cpu_ops",
    "decode_dpuczdx8g_isa1",
    "get_target",
    "list_targets",
]
