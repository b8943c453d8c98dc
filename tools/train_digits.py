"""Train the built-in demo model (DigitsNet on scikit-learn's digits) and save the weights shipped in the package.

    python tools/train_digits.py        # writes src/pytorch_nndct/models/digits_net.pth

Deterministic (fixed seeds); prints the float test accuracy.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pytorch_nndct.models.digits import accuracy, train

OUT = Path(__file__).resolve().parents[1] / "src" / "pytorch_nndct" / "models" / "digits_net.pth"


def main() -> None:
    model, (_, _, x_test, y_test) = train()
    torch.save(model.state_dict(), OUT)
    print(f"float test accuracy {accuracy(model, x_test, y_test):.2f} %; wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
