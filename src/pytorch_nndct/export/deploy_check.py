"""deploy_check data (SPEC 7): golden per-op values of the deploy graph for one input.

In `deploy_check_data_int/<Model>/`: for every op, `<name>.bin` holds its value as raw float32 (NHWC for
feature maps); a `fix` op (named `<producer>_fix`) holds its integers instead, as raw int8 (int16 for
wider bit widths) = value * 2^fix_point; `shape.txt` lists `[dims]: <name>` per file. The values come
from the reference run of the deploy graph, so they are what the exported model computes.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path

import torch

from ..codegen import prepare_output_dir
from ..quant.primitives import blockwise
from .deploy import DeployGraph, sanitize
from .reference import iter_deploy_graph

__all__ = ["DEPLOY_CHECK_DIR", "write_deploy_check"]

DEPLOY_CHECK_DIR = "deploy_check_data_int"


def _payload(value: torch.Tensor, fix: tuple[int, int] | None) -> bytes:
    if fix is None:
        return value.detach().to(torch.float32).contiguous().numpy().tobytes()
    bw, fp = fix
    dtype = torch.int8 if bw <= 8 else torch.int16
    q = blockwise(lambda x: (x.double() * math.ldexp(1.0, fp)).round_().to(dtype), value.detach())
    return q.contiguous().numpy().tobytes()


def write_deploy_check(deploy: DeployGraph, inputs: list[torch.Tensor], output_dir: str | os.PathLike) -> Path:
    """Run the deploy graph on `inputs` and write its golden data, each op's as it is computed; returns the model's
    folder."""
    root = prepare_output_dir(Path(output_dir) / DEPLOY_CHECK_DIR)
    final = root / sanitize(deploy.name)
    staging = Path(tempfile.mkdtemp(dir=root, prefix=".staging_"))
    try:
        lines = []
        for op, value in iter_deploy_graph(deploy, inputs):
            (staging / f"{op.name}.bin").write_bytes(_payload(value, op.fix))
            lines.append(f"{list(value.shape)}: {op.name}")
        (staging / "shape.txt").write_text("\n".join(lines) + "\n")
        backup = None
        if final.exists():
            backup = root / f".old_{final.name}"
            shutil.rmtree(backup, ignore_errors=True)
            os.rename(final, backup)
        os.rename(staging, final)
        if backup is not None:
            shutil.rmtree(backup, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final
