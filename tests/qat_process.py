"""The deploy step of quantization-aware training in a fresh process (used by tests/test_qat.py).

python tests/qat_process.py WORK_DIR RESULT_DIR OUTPUT_FILE: in WORK_DIR (where .vai_qat goes), builds the
QatProcessor of the digits model, loads the deployable model of RESULT_DIR for the xmodel (CPU), saves its
outputs on the held-out digits to OUTPUT_FILE, and exports the .xmodel into RESULT_DIR.
"""

from __future__ import annotations

import os
import sys

import torch

from pytorch_nndct import QatProcessor
from pytorch_nndct.models.digits import load_digits, pretrained


def main() -> None:
    work, result, output = sys.argv[1:4]
    os.chdir(work)
    xtr, _, xte, _ = load_digits()
    qat = QatProcessor(pretrained(), (xtr[:1],), bitwidth=4)
    model = qat.deployable_model(result, used_for_xmodel=True)
    with torch.no_grad():
        torch.save(model(xte), output)
        model(xte[:1])
    qat.export_xmodel(result)


if __name__ == "__main__":
    main()
