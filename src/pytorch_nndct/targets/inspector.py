"""`Inspector`: which ops of a model a DPU target runs, which stay on the CPU and why (VAIQ35 2).

    inspector = Inspector("DPUCZDX8G_ISA1_B4096")        # or a fingerprint, "0x0101000056010407"
    inspector.inspect(model, (x,), output_dir="quantize_result", verbose_level=1, image_format="svg")

writes `<output_dir>/<Model>.py` (the regenerated module, as the quantizer writes it), `inspect_<target>.txt`
(the report) and, with `image_format`, `inspect_<target>.gv` plus `.svg` or `.png` (the graph coloured by device),
all atomically. Differences from the original: the assignment is rule-based from the target table (the original
compiles each pattern with its closed compiler), shapes are PyTorch's (NCHW), the model is not copied (it is traced
in eval mode and its training flag restored), the level-2 table points to the real report file, and its header
reads "assigned device" (the original: "assgined").
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..codegen import prepare_output_dir, write_atomic, write_module
from ..errors import InputError
from ..ir.batch import at_batch, batch_of
from ..ir.graph import Graph
from ..ir.trace import trace
from ..passes import optimize
from .assign import Assignment, Device, assign_devices
from .report import IMAGE_FORMATS, cpu_rows, draw, report_text, text_table
from .rules import op_label
from .table import get_target

__all__ = ["Inspection", "Inspector"]

log = logging.getLogger("pytorch_nndct")


@dataclass
class Inspection:
    """What one `inspect()` call found and wrote."""

    graph: Graph
    assignments: dict[str, Assignment]
    files: list[Path] = field(default_factory=list)

    def on(self, device: str) -> list[str]:
        """The names of the nodes assigned to `device` ('DPU', 'CPU' or 'USER')."""
        return [name for name, a in self.assignments.items() if a.device == device]


def _inputs_on_model_device(module: torch.nn.Module, input_args: Any) -> Any:
    param = next(iter(module.parameters()), None)
    if param is None:
        return input_args
    return torch.utils._pytree.tree_map(
        lambda v: v.to(param.device) if isinstance(v, torch.Tensor) and v.device != param.device else v, input_args
    )


class Inspector:
    """Inspect models for one DPU target, given by name or by fingerprint (a string starting with '0x')."""

    def __init__(self, name_or_fingerprint: str) -> None:
        self.target = get_target(name_or_fingerprint)
        self.name = name_or_fingerprint.strip()  # the files are named after the string given, as the original's
        log.info("Inspector is on (target %s, fingerprint %s).", self.target.name,
                 self.target.fingerprint_hex)  # fmt: skip

    def inspect(
        self,
        module: torch.nn.Module,
        input_args: torch.Tensor | tuple[Any, ...],
        device: torch.device | str | None = None,
        output_dir: str | os.PathLike = "quantize_result",
        verbose_level: int = 1,
        image_format: str | None = None,
    ) -> Inspection:
        """Trace `module` on `input_args` (one forward), assign each op, report and optionally draw it.

        `device` is accepted for the original's signature: the model is traced where its parameters are, and
        the inputs are moved there. `verbose_level`: 0 prints nothing, 1 the ops on the CPU, 2 every op.
        """
        if image_format is not None and image_format not in IMAGE_FORMATS:
            raise InputError(f"Only support dump svg or png format, got image_format={image_format!r}. Fix: pass "
                             "'svg', 'png' or None.")  # fmt: skip
        if verbose_level not in (0, 1, 2):
            raise InputError(f"verbose_level must be 0, 1 or 2, got {verbose_level!r}.")
        if isinstance(module, torch.nn.DataParallel | torch.nn.parallel.DistributedDataParallel):
            module = module.module
        if not isinstance(module, torch.nn.Module):
            raise InputError(f"inspect() needs the float model as a torch.nn.Module, got {type(module).__name__}.")
        out_dir = prepare_output_dir(output_dir)
        log.info("=>Start to inspect model...")
        args = _inputs_on_model_device(module, input_args)
        graph = optimize(trace(module, args))
        files = [write_module(graph, out_dir)]
        example_batch = batch_of(args if isinstance(args, tuple) else (args,))
        if example_batch is not None:  # report the example's shapes, as the original does
            at_batch(graph, example_batch)
        assignments = assign_devices(graph, self.target)
        text_path = out_dir / f"inspect_{self.name}.txt"
        write_atomic({text_path: report_text(graph, assignments, self.name, self.target).encode()})
        files.append(text_path)
        self._show(graph, assignments, text_path, verbose_level)
        if image_format is not None:
            source, image = draw(graph, assignments, image_format)
            gv, picture = out_dir / f"inspect_{self.name}.gv", out_dir / f"inspect_{self.name}.{image_format}"
            write_atomic({gv: source.encode(), picture: image})
            files += [gv, picture]
            log.info("Dot image is generated.(%s)", picture)
        log.info("=>Finish inspecting.")
        return Inspection(graph, assignments, files)

    @staticmethod
    def _show(graph: Graph, assignments: dict[str, Assignment], path: Path, verbose_level: int) -> None:
        if verbose_level == 1:
            rows = cpu_rows(graph, assignments)
            if rows:
                log.info("The operators assigned to the CPU are as follows(see more details in '%s'):",
                         path)  # fmt: skip
                print(text_table(rows, ["node name", "op type", "hardware constraints"]))
            else:
                log.info("All the operators are assigned to the DPU(see more details in '%s')", path)
        elif verbose_level == 2:
            rows = [[name, op_label(graph.node(name)), a.device.value.lower()] for name, a in assignments.items()
                    if a.device is not Device.USER]  # fmt: skip
            log.info("Operator device allocation table(see more details in '%s'):", path)
            print(text_table(rows, ["node name", "op type", "assigned device"]))
