"""Post-training quantization of torchvision models: ours (power-of-two, per tensor, W8A8) vs torchao PT2E.

    python benchmarks/quant_vs_pt2e.py [resnet18 mobilenet_v2 efficientnet_b0 inception_v3] [--batches 8]
                                      [--bn blend|exact]

Random weights with BN statistics populated by train-mode forwards; the same calibration batches (batch
8) and the same evaluation batch for every method, in one run. Prints, per model:
- output SQNR against the float model: ours (default: cross-layer equalization and bias correction; bias
  correction only; neither, the bare numerics) and PT2E
  (XNNPACKQuantizer, per-tensor symmetric weights and activations, HistogramObserver; and, for reference,
  XNNPACK's default with affine activations);
- calibration time / float time over the calibration batches (ours with the defaults and with neither
  helper; PT2E's observers);
- test-mode time / float time (ours: fake-quant simulation; PT2E: its converted reference model).
Times are wall clock after warm-up passes (which also compile our fused kernels); float and test-mode times
are the best of 3 passes (calibration too: more passes only add observations). The script re-executes
itself with glibc's allocator pinned to its steady state (see steady_alloc.py): without that the float
baseline depends on what ran before it. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from steady_alloc import reexec_with_steady_allocator

from helpers import prepare_model, sqnr_db
from pytorch_nndct.apis import torch_quantizer


def setup(
    name: str, batches: int = 8, batch_size: int = 8, bn_stats: str = "blend"
) -> tuple[torch.nn.Module, list, torch.Tensor]:
    """The model (random weights, BN statistics populated: see helpers.prepare_model), calibration batches
    and the evaluation batch."""
    size = 299 if name == "inception_v3" else 224
    torch.manual_seed(0)
    model = prepare_model(torchvision.models.get_model(name), (3, size, size), bn_stats=bn_stats)
    g = torch.Generator().manual_seed(1)
    calib = [torch.randn(batch_size, 3, size, size, generator=g) for _ in range(batches)]
    return model, calib, torch.randn(batch_size, 3, size, size, generator=g)


def timed(fn, batches, repeats: int = 3) -> float:
    """Best of `repeats` passes over the batches (wall clock)."""
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            for b in batches:
                fn(b)
            best = min(best, time.perf_counter() - start)
    return best


def ours(model, example, calib, test_x, out_dir, cle: bool = True, bias_corr: bool = True):
    config = Path(out_dir) / "config.json"
    config.write_text(json.dumps({"include_cle": cle, "include_bias_corr": bias_corr}))
    q = torch_quantizer("calib", model, (example,), output_dir=out_dir, quant_config_file=config)
    qm = q.quant_model
    t_calib = timed(qm, calib)
    q.export_quant_config()
    t = torch_quantizer("test", model, (example,), output_dir=out_dir, quant_config_file=config).quant_model
    with torch.no_grad():
        t(test_x)  # warm-up
        out = t(test_x)
    t_test = timed(t, calib)
    return out, t_calib, t_test


def _power_of_two(observer_cls):
    """An observer whose scale is rounded up to a power of two (its range kept: no extra clipping)."""

    class PowerOfTwo(observer_cls):
        def calculate_qparams(self):
            scale, zero_point = super().calculate_qparams()
            return torch.exp2(torch.ceil(torch.log2(scale))), zero_point

    PowerOfTwo.__name__ = f"PowerOfTwo{observer_cls.__name__}"
    return PowerOfTwo


def _with_power_of_two(spec):
    ctr = spec.observer_or_fake_quant_ctr  # ObserverClass.with_args(eps=...): a wrapped functools.partial
    base = getattr(ctr, "p", ctr)
    pow2 = _power_of_two(base.func).with_args(*base.args, **base.keywords)
    return dataclasses.replace(spec, observer_or_fake_quant_ctr=pow2)


def pt2e_config(symmetric_activations: bool, power_of_two: bool = False):
    """XNNPACK's per-tensor config; its activations are affine unless made symmetric here, and its scales
    float unless `power_of_two` (symmetric only; every scale rounded up to a power of two, the DPU's scheme
    with PT2E's observers: HistogramObserver for activations, MinMaxObserver for weights)."""
    from torchao.testing.pt2e._xnnpack_quantizer import get_symmetric_quantization_config

    config = get_symmetric_quantization_config(is_per_channel=False)
    if not symmetric_activations:
        return config
    act = dataclasses.replace(config.input_activation, qscheme=torch.per_tensor_symmetric)
    weight = config.weight
    if power_of_two:
        act, weight = _with_power_of_two(act), _with_power_of_two(weight)
    return dataclasses.replace(config, input_activation=act, output_activation=act, weight=weight)


def pt2e(model, example, calib, test_x, symmetric_activations: bool = True, power_of_two: bool = False):
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.testing.pt2e._xnnpack_quantizer import XNNPACKQuantizer

    exported = torch.export.export(copy.deepcopy(model), (example,)).module()
    quantizer = XNNPACKQuantizer().set_global(pt2e_config(symmetric_activations, power_of_two))
    prepared = prepare_pt2e(exported, quantizer)
    t_calib = timed(prepared, calib)
    converted = convert_pt2e(prepared)
    with torch.no_grad():
        out = converted(test_x)
    t_test = timed(converted, calib)
    return out, t_calib, t_test


def main() -> int:
    reexec_with_steady_allocator()
    parser = argparse.ArgumentParser()
    parser.add_argument("models", nargs="*", default=["resnet18", "mobilenet_v2", "efficientnet_b0", "inception_v3"])
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--bn", choices=["blend", "exact"], default="blend", help="how BN statistics are populated")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.batches} calibration batches of "
        f"{args.batch_size}, BN statistics {args.bn}"
    )
    print(
        "| model | SQNR ours (dB) | SQNR ours, BC only (dB) | SQNR ours, neither (dB) | SQNR PT2E sym (dB) "
        "| SQNR PT2E affine act (dB) | calib/float ours | calib/float ours, neither | calib/float PT2E "
        "| test/float ours | test/float PT2E |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.models:
        model, calib, test_x = setup(name, args.batches, args.batch_size, args.bn)
        with torch.no_grad():
            model(calib[0])  # warm-up
            ref = model(test_x)
        t_float = timed(model, calib)
        with tempfile.TemporaryDirectory() as tmp:
            with torch.no_grad():  # warm-up (compiles our kernels once per process)
                torch_quantizer("calib", model, (calib[0][:2],), output_dir=tmp).quant_model(calib[0])
            o_out, o_cal, o_test = ours(model, calib[0][:2], calib, test_x, tmp)
            b_out, _, _ = ours(model, calib[0][:2], calib, test_x, tmp, cle=False)
            n_out, n_cal, _ = ours(model, calib[0][:2], calib, test_x, tmp, cle=False, bias_corr=False)
        p_out, p_cal, p_test = pt2e(model, calib[0], calib, test_x)
        a_out, _, _ = pt2e(model, calib[0], calib, test_x, symmetric_activations=False)
        print(
            f"| {name} | {sqnr_db(ref, o_out):.2f} | {sqnr_db(ref, b_out):.2f} | {sqnr_db(ref, n_out):.2f} | "
            f"{sqnr_db(ref, p_out):.2f} | "
            f"{sqnr_db(ref, a_out):.2f} | {o_cal / t_float:.2f} | {n_cal / t_float:.2f} | {p_cal / t_float:.2f} | "
            f"{o_test / t_float:.2f} | {p_test / t_float:.2f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
