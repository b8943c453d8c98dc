"""The original's example, with vai_q_pytorch 3.5's flags and calls: quantize torchvision's resnet18.

    python examples/resnet18_quant.py --quant_mode calib --data_dir DIR --model_dir DIR
    python examples/resnet18_quant.py --quant_mode test  --data_dir DIR --model_dir DIR
    python examples/resnet18_quant.py --quant_mode test  --data_dir DIR --model_dir DIR --deploy
    python examples/resnet18_quant.py --quant_mode float --inspect --target DPUCZDX8G_ISA1_B4096
    ... --fast_finetune (both calib and test), --config_file FILE, --subset_len N, --batch_size N

--data_dir is an ImageFolder tree (one folder per class; `val/` inside it is used when present);
--model_dir holds resnet18.pth (random weights are used, with a warning, when it is missing). Calibration
runs the float model's own evaluation loop on `quantizer.quant_model` and exports quant_info.json; test
mode rebuilds the quantized model from it and prints loss, top-1 and top-5; --deploy (test mode) evaluates
one image and writes the TorchScript, ONNX and XIR exports. --output_dir is ours (default quantize_result,
the original's fixed folder).
"""

from __future__ import annotations

import argparse
import logging
import os
import time

import torch
import torchvision
from torchvision import transforms

from pytorch_nndct.apis import Inspector, torch_quantizer

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
    device = next(model.parameters()).device
    loss_fn = torch.nn.CrossEntropyLoss(reduction="sum")
    total, loss, top1, top5 = 0, 0.0, 0, 0
    for images, labels in loader:
        out = model(images.to(device)).cpu()
        loss += loss_fn(out, labels).item()
        best5 = out.topk(min(5, out.shape[1]), dim=1).indices
        top1 += int((best5[:, 0] == labels).sum())
        top5 += int((best5 == labels[:, None]).any(dim=1).sum())
        total += len(labels)
    return 100.0 * top1 / total, 100.0 * top5 / total, loss / total


def forward_loop(model: torch.nn.Module, loader: torch.utils.data.DataLoader) -> None:
    device = next(model.parameters()).device
    with torch.no_grad():
        for images, _ in loader:
            model(images.to(device))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Quantize resnet18 (the vai_q_pytorch 3.5 example).")
    parser.add_argument("--data_dir", default="/path/to/imagenet/")
    parser.add_argument("--model_dir", default="/path/to/trained_model/")
    parser.add_argument("--config_file", default=None, help="quant_config_file (JSON)")
    parser.add_argument("--subset_len", type=int, default=None, help="use only this many images")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--quant_mode", default="calib", choices=["float", "calib", "test"])
    parser.add_argument("--fast_finetune", action="store_true", help="AdaQuant (calib) / load it (test)")
    parser.add_argument("--deploy", action="store_true", help="export TorchScript, ONNX and xmodel (test mode)")
    parser.add_argument("--inspect", action="store_true", help="float mode: inspect the model for --target")
    parser.add_argument("--target", nargs="?", const="", default=None, help="DPU target name or fingerprint")
    parser.add_argument("--output_dir", default="quantize_result")
    args, _ = parser.parse_known_args()  # as the original: leave other flags to the caller
    return args


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.deploy and args.quant_mode != "test":
        log.warning("exporting the deployable model needs test mode; --deploy is turned off")
        args.deploy = False
    if args.deploy:
        args.batch_size, args.subset_len = 1, 1

    model = torchvision.models.resnet18().cpu()
    weights = os.path.join(args.model_dir, "resnet18.pth")
    if os.path.exists(weights):
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    else:
        log.warning("%s not found: using random weights", weights)
    example = torch.randn([args.batch_size, 3, 224, 224])

    if args.quant_mode == "float" and args.inspect:
        if not args.target:
            raise SystemExit("--inspect needs --target (a DPU name such as DPUCZDX8G_ISA1_B4096)")
        inspector = Inspector(args.target)
        inspector.inspect(model, (example,), device=device, output_dir=args.output_dir)
        return
    if args.quant_mode == "float":
        quant_model = model.to(device).eval()
    else:
        quantizer = torch_quantizer(
            args.quant_mode, model, (example), output_dir=args.output_dir, device=device,
            quant_config_file=args.config_file, target=args.target,
        )  # fmt: skip
        quant_model = quantizer.quant_model

    loader = load_data(args.data_dir, args.batch_size, args.subset_len)
    if args.fast_finetune and args.quant_mode == "calib":
        ft_loader = load_data(args.data_dir, args.batch_size, 5120)
        quantizer.fast_finetune(evaluate, (quant_model, ft_loader))
    elif args.fast_finetune and args.quant_mode == "test":
        quantizer.load_ft_param()

    if args.quant_mode == "calib":
        forward_loop(quant_model, loader)
        quantizer.export_quant_config()
        return
    start = time.perf_counter()
    top1, top5, loss = evaluate(quant_model, loader)
    print(f"loss: {loss:.4f}  top-1 / top-5 accuracy: {top1:.2f} / {top5:.2f}  ({time.perf_counter() - start:.1f} s)")
    if args.deploy:
        quantizer.export_torch_script()
        quantizer.export_onnx_model()
        quantizer.export_xmodel()


if __name__ == "__main__":
    main()
