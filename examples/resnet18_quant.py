"""The seed's example: quantize torchvision's resnet18 with vai_q_pytorch's workflow.

    python examples/resnet18_quant.py --quant_mode calib --data_dir DIR --model_dir DIR
    python examples/resnet18_quant.py --quant_mode test  --data_dir DIR --model_dir DIR

--data_dir is an ImageFolder tree (one folder per class; `val/` inside it is used when present);
--model_dir holds resnet18.pth (random weights are used, with a warning, when it is missing). Calibration
runs the float model's own evaluation loop on `quantizer.quant_model` and exports quant_info.json; test
mode rebuilds the quantized model from it and prints loss, top-1 and top-5.
"""

from __future__ import annotations

import argparse
import logging
import os
import time

import torch
import torchvision
from torchvision import transforms

from pytorch_nndct.apis import torch_quantizer

log = logging.getLogger("resnet18_quant")


def load_data(data_dir: str, batch_size: int, subset_len: int | None) -> torch.utils.data.DataLoader:
    root = os.path.join(data_dir, "val") if os.path.isdir(os.path.join(data_dir, "val")) else data_dir
    tf = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        ]
    )
    dataset = torchvision.datasets.ImageFolder(root, tf)
    if subset_len:
        g = torch.Generator().manual_seed(0)
        dataset = torch.utils.data.Subset(dataset, torch.randperm(len(dataset), generator=g)[:subset_len].tolist())
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: torch.utils.data.DataLoader) -> tuple[float, float, float]:
    """(top-1, top-5, loss) as the original example returns them; fast_finetune uses the last item."""
    loss_fn = torch.nn.CrossEntropyLoss(reduction="sum")
    total, loss, top1, top5 = 0, 0.0, 0, 0
    for images, labels in loader:
        out = model(images)
        loss += loss_fn(out, labels).item()
        best5 = out.topk(min(5, out.shape[1]), dim=1).indices
        top1 += int((best5[:, 0] == labels).sum())
        top5 += int((best5 == labels[:, None]).any(dim=1).sum())
        total += len(labels)
    return 100.0 * top1 / total, 100.0 * top5 / total, loss / total


def main() -> None:
    parser = argparse.ArgumentParser(description="Quantize resnet18 (the vai_q_pytorch example).")
    parser.add_argument("--quant_mode", default="calib", help="calib (1), test (2) or float (0)")
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--model_dir", default="./")
    parser.add_argument("--subset_len", type=int, default=None, help="use only this many images")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--output_dir", default="quantize_result")
    parser.add_argument("--fast_finetune", action="store_true", help="AdaQuant before calibration (calib mode)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    mode = int(args.quant_mode) if args.quant_mode.isdigit() else args.quant_mode

    model = torchvision.models.resnet18()
    weights = os.path.join(args.model_dir, "resnet18.pth")
    state_dict_file = weights if os.path.exists(weights) else None
    if state_dict_file is None:
        log.warning("%s not found: using random weights", weights)
    model.eval()

    loader = load_data(args.data_dir, args.batch_size, args.subset_len)
    quantizer = torch_quantizer(
        mode,
        model,
        (torch.randn(args.batch_size, 3, 224, 224),),
        state_dict_file=state_dict_file,
        output_dir=args.output_dir,
    )
    if args.fast_finetune and mode in ("calib", 1):
        quantizer.fast_finetune(evaluate, (quantizer.quant_model, loader))
    start = time.perf_counter()
    top1, top5, loss = evaluate(quantizer.quant_model, loader)
    print(f"loss: {loss:.4f}  top-1 / top-5 accuracy: {top1:.2f} / {top5:.2f}  ({time.perf_counter() - start:.1f} s)")
    if mode in ("calib", 1):
        quantizer.export_quant_config()


if __name__ == "__main__":
    main()
