"""`vai_q_pytorch` (also `python -m pytorch_nndct`): quantize, test, export, inspect and report from a shell.

Every subcommand works on ./quantize_result by default, like the original's output_dir. `quantize`
records how it was run (run.json) so the later subcommands rebuild the same model and data without
repeating the options. With no arguments, `quantize` quantizes the built-in demo: a small CNN trained on
scikit-learn's digits, whose weights ship in the package.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..codegen import write_atomic
from ..errors import NndctError
from .report import sqnr_db
from .sources import BUILTIN, CliError, Data, load_data, load_model

__all__ = ["main"]

PROG = "vai_q_pytorch"
RUN_FILE = "run.json"
log = logging.getLogger("pytorch_nndct")


# ---------------------------------------------------------------------------------------------- helpers
def _progress(iterable: Any, desc: str, total: int | None, quiet: bool) -> Any:
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, disable=quiet, unit="batch", leave=False, file=sys.stderr)


def _say(args: argparse.Namespace, text: str = "") -> None:
    if not args.quiet:
        print(text)


def _run_settings(args: argparse.Namespace) -> dict[str, Any]:
    """quantize's settings, or those recorded by an earlier quantize in the output dir (for later commands)."""
    path = Path(args.output_dir) / RUN_FILE
    if not path.is_file():
        raise CliError(
            f"{path} does not exist: {args.output_dir} holds no quantized model",
            f"run '{PROG} quantize --output-dir {args.output_dir}' first",
        )
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise CliError(f"{path} is corrupted ({exc})", f"run '{PROG} quantize' again") from exc


def _check_fits(model: torch.nn.Module, data: Data) -> None:
    try:
        with torch.no_grad():
            model(data.calib_x[:2])
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CliError(
            f"data {data.name!r} of shape {list(data.calib_x.shape[1:])} does not fit the model: {first}",
            "give data of the model's input shape (for image folders, --input-size)",
        ) from exc


def _quantizer(mode: str, model: torch.nn.Module, data: Data, out: Path, settings: dict[str, Any]) -> Any:
    from ..apis import torch_quantizer

    return torch_quantizer(
        mode,
        model,
        (data.calib_x[:2],),
        output_dir=out,
        bitwidth_w=settings["bitwidth_w"],
        bitwidth_a=settings["bitwidth_a"],
        device=settings.get("device"),
        quant_config_file=settings.get("config"),
    )


def _evaluate(
    model: Callable, data: Data, batch_size: int, desc: str, quiet: bool
) -> tuple[torch.Tensor, float | None]:
    outs = []
    device = next((p.device for p in model.parameters()), torch.device("cpu")) if hasattr(model, "parameters") else None
    n = math.ceil(len(data.eval_x) / batch_size)
    with torch.no_grad():
        for x in _progress(data.batches(data.eval_x, batch_size), desc, n, quiet):
            out = model(x.to(device) if device is not None else x)
            outs.append((out[0] if isinstance(out, list | tuple) else out).detach().float().cpu())
    out = torch.cat(outs)
    acc = None
    if data.eval_y is not None and out.dim() == 2:
        acc = 100.0 * float((out.argmax(1) == data.eval_y).float().mean())
    return out, acc


def _publish(staging: Path, out: Path) -> list[Path]:
    """Move everything under `staging` into `out` in one atomic multi-file write; returns the paths."""
    files = {}
    for src in sorted(p for p in staging.rglob("*") if p.is_file()):
        dest = out / src.relative_to(staging)
        dest.parent.mkdir(parents=True, exist_ok=True)
        files[dest] = src.read_bytes()
    write_atomic(files)
    return list(files)


def _staging(out: Path) -> Path:
    if out.exists() and not out.is_dir():
        raise CliError(f"output dir {out} is a file", "pass --output-dir a folder (it is created if missing)")
    out.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=".staging-", dir=out))


# ---------------------------------------------------------------------------------------------- commands
def cmd_quantize(args: argparse.Namespace) -> int:
    model = load_model(args.model, args.weights)
    data_spec = args.data or (BUILTIN if args.model == BUILTIN else None)
    if data_spec is None:
        raise CliError("--data is required for this model", "give an image folder or a .pt tensor file of inputs")
    model_spec = args.model
    if ":" in model_spec and model_spec.rsplit(":", 1)[0].endswith(".py"):
        path, factory = model_spec.rsplit(":", 1)
        model_spec = f"{Path(path).resolve()}:{factory}"
    settings = {
        "model": model_spec,
        "weights": str(Path(args.weights).resolve()) if args.weights else None,
        "data": data_spec if data_spec == BUILTIN else str(Path(data_spec).resolve()),
        "input_size": args.input_size,
        "batch_size": args.batch_size,
        "bitwidth_w": args.bitwidth_w or args.bitwidth,
        "bitwidth_a": args.bitwidth_a or args.bitwidth,
        "device": args.device,
        "config": str(Path(args.config).resolve()) if args.config else None,
    }
    data = load_data(data_spec, args.input_size)
    _check_fits(model, data)
    out = Path(args.output_dir)
    staging = _staging(out)
    try:
        calib = _quantizer("calib", model, data, staging, settings)
        n = min(args.calib_batches, math.ceil(len(data.calib_x) / args.batch_size))
        with torch.no_grad():
            for x in _progress(data.batches(data.calib_x, args.batch_size, n), "calibrating", n, args.quiet):
                calib.quant_model(x.to(calib.device) if calib.device is not None else x)
        calib.export_quant_config()
        test = _quantizer("test", model, data, staging, settings)
        (staging / RUN_FILE).write_text(json.dumps(settings, indent=2) + "\n")
        rows = _compare(model, test, data, args)
        written = _publish(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _print_table(args, test.graph.name, data, rows)
    _say(args, f"\nwrote {len(written)} files to {out}/:")
    for p in written:
        _say(args, f"  {p.relative_to(out)}")
    _say(args, f"\nnext: {PROG} test      evaluate again (or on --data other images)")
    _say(args, f"      {PROG} export    write the .xmodel, ONNX model and deploy-check data")
    _say(args, f"      {PROG} inspect   see what a DPU would run and the quantization points")
    _say(args, f"      {PROG} report    per-layer fix positions, ranges and SQNR as HTML with plots")
    return 0


def _compare(model: torch.nn.Module, test: Any, data: Data, args: argparse.Namespace) -> dict[str, Any]:
    if getattr(args, "device", None):
        model = model.to(args.device)
    ref, float_acc = _evaluate(model, data, args.batch_size, "float model", args.quiet)
    out, quant_acc = _evaluate(test.quant_model, data, args.batch_size, "quantized model", args.quiet)
    return {"float": float_acc, "quantized": quant_acc, "sqnr": sqnr_db(ref, out), "n": len(data.eval_x)}


def _print_table(args: argparse.Namespace, name: str, data: Data, rows: dict[str, Any]) -> None:
    bw = f"W{args.bitwidth_w or args.bitwidth}A{args.bitwidth_a or args.bitwidth}"
    print(f"\n{name} on {data.name} ({rows['n']} evaluation samples), {bw}:")
    if rows["float"] is not None:
        print("| model | top-1 (%) |")
        print("|---|---|")
        print(f"| float | {rows['float']:.2f} |")
        print(f"| quantized | {rows['quantized']:.2f} |")
        print(f"| drop | {rows['float'] - rows['quantized']:.2f} |")
    print(f"output SQNR quantized vs float: {rows['sqnr']:.1f} dB")


def _rebuild(args: argparse.Namespace) -> tuple[dict[str, Any], torch.nn.Module, Data, Any]:
    settings = _run_settings(args)
    model = load_model(settings["model"], settings.get("weights"))
    data = load_data(getattr(args, "data", None) or settings["data"], settings["input_size"])
    _check_fits(model, data)
    return settings, model, data, _quantizer("test", model, data, Path(args.output_dir), settings)


def cmd_test(args: argparse.Namespace) -> int:
    settings, model, data, test = _rebuild(args)
    args.batch_size = args.batch_size or settings["batch_size"]
    args.device = settings.get("device")
    args.bitwidth_w, args.bitwidth_a, args.bitwidth = settings["bitwidth_w"], settings["bitwidth_a"], None
    _print_table(args, test.graph.name, data, _compare(model, test, data, args))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    _, _, data, test = _rebuild(args)
    kinds = [k for k in ("xmodel", "onnx") if getattr(args, k)] or ["xmodel", "onnx"]
    with torch.no_grad():
        test.quant_model(data.calib_x[: max(2, args.batch_size)])  # the input deploy-check data records
    written = []
    for kind in kinds:
        if kind == "xmodel":
            if test.config.target_device != "DPU":
                _say(args, f"skipping the .xmodel: the config targets {test.config.target_device}")
                continue
            written.append(test.export_xmodel(deploy_check=args.deploy_check, batch_size=args.batch_size))
        else:
            try:
                written.append(test.export_onnx_model())
            except NndctError as exc:
                if args.onnx:
                    raise
                _say(args, f"skipping ONNX: {exc}")
    for p in written:
        print(f"wrote {p}")
    if args.deploy_check and "xmodel" in kinds:
        print(f"wrote deploy-check data under {Path(args.output_dir) / 'deploy_check_data_int'}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    _, _, _, test = _rebuild(args)
    print(test.partition_report())
    print(f"\nquantization points of {test.graph.name} ({len(test.table.params)} parameters, "
          f"{len(test.table.outputs)} outputs):")  # fmt: skip
    print("| tensor | kind | bit width | fix position | step |")
    print("|---|---|---|---|---|")
    for kind, section in (("param", test.table.params), ("output", test.table.outputs)):
        for key, spec in section.items():
            step = "-" if spec.fix_pos is None else f"2^{-spec.fix_pos}"
            print(f"| {key} | {kind} | {spec.bitwidth} | {spec.fix_pos} | {step} |")
    if test.plan.float_ops:
        print("\nops computed in float:")
        for name, why in test.plan.float_ops.items():
            print(f"  {name}: {why}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import build_report

    _, model, data, test = _rebuild(args)
    files = build_report(test, model, data.eval_x[: args.samples], Path(args.output_dir))
    for p in files:
        print(f"wrote {p}")
    return 0


# ---------------------------------------------------------------------------------------------- parser
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, fn: Callable, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(fn=fn)
        p.add_argument("--output-dir", default="quantize_result", help="where results live (default: %(default)s)")
        p.add_argument("--quiet", action="store_true", help="no progress bars or chatter")
        p.add_argument("--verbose", action="store_true", help="log every step of the quantizer")
        return p

    q = command("quantize", cmd_quantize, "calibrate a model, write quant_info.json, print float vs quantized")
    q.add_argument(
        "--model", default=BUILTIN, help="'digits' (built in, default), torchvision:NAME, or file.py:factory"
    )
    q.add_argument("--weights", help="a .pth state dict for the model")
    q.add_argument("--data", help="image folder, .pt tensor file ([N,...] or (x, y)), or 'digits'")
    q.add_argument("--input-size", type=int, default=224, help="image side for image folders (default: 224)")
    q.add_argument("--batch-size", type=int, default=32)
    q.add_argument("--calib-batches", type=int, default=16, help="calibration batches (default: %(default)s)")
    q.add_argument("--bitwidth", type=int, default=8, help="bit width of weights and activations")
    q.add_argument("--bitwidth-w", type=int, help="weights' bit width (overrides --bitwidth)")
    q.add_argument("--bitwidth-a", type=int, help="activations' bit width (overrides --bitwidth)")
    q.add_argument("--device", help="cpu (default), cuda, cuda:1, ...")
    q.add_argument("--config", help="a quant_config_file (JSON, the original's keys)")

    t = command("test", cmd_test, "evaluate the quantized model against the float one")
    t.add_argument("--data", help="other labelled data than calibration used (image folder or .pt)")
    t.add_argument("--batch-size", type=int)

    e = command("export", cmd_export, "write the .xmodel (with deploy-check data) and the ONNX QDQ model")
    e.add_argument("--xmodel", action="store_true", help="only the .xmodel")
    e.add_argument("--onnx", action="store_true", help="only the ONNX model")
    e.add_argument("--deploy-check", action="store_true", help="also write deploy-check golden data")
    e.add_argument("--batch-size", type=int, default=1, help="batch size of the deployed model (default: 1)")

    command("inspect", cmd_inspect, "print the DPU partition and the quantization points")

    r = command("report", cmd_report, "write report.html (tables and plots) and report.txt")
    r.add_argument("--samples", type=int, default=8, help="samples the per-layer statistics use (default: 8)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    level = logging.INFO if args.verbose else logging.ERROR if args.quiet else logging.WARNING
    logging.basicConfig(level=level, format="%(name)s: %(message)s")
    log.setLevel(level)
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "No CUDA runtime" on CPU builds
    for name in ("bitwidth", "bitwidth_w", "bitwidth_a", "batch_size", "calib_batches", "input_size", "samples"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    try:
        return args.fn(args)
    except CliError as exc:
        print(f"{PROG}: error: {exc}" + (f" (hint: {exc.hint})" if exc.hint else ""), file=sys.stderr)
        return 2
    except NndctError as exc:
        print(f"{PROG}: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; {args.output_dir} was left as it was", file=sys.stderr)
        return 130
