"""`QatProcessor`: the original's quantization-aware training API (VAIQ35 4.1) over our generated module.

    qat = QatProcessor(model, (example,), bitwidth=8)
    trainable = qat.trainable_model(calib_dir="")        # train it in your own loop (Adam, DDP, ...)
    deployable = qat.to_deployable(trainable, out_dir)   # quant_info.json, test/quant_info.json, deployable.pth
    # later, in a fresh process: the same QatProcessor(model, inputs) then
    deployable = qat.deployable_model(out_dir, used_for_xmodel=True); deployable(x); qat.export_xmodel(out_dir)

The trainable model is the generated module of our graph with a TQT quantizer on every point (quant/qat.py):
no model rewrite is needed (`+`, `torch.cat`, functional calls and reused modules are captured as ops), and the
original's rewrites (functional.Add, QuantStub / DeQuantStub, one call per module) are accepted. As in the
original, equalization and bias correction are off. Batch-norm is folded into the convolutions, so the folded
weights are what is trained and quantized, with the BN statistics as they were (the original's
`freeze_bn_stats()` state; `freeze_bn_stats()` and `fuse_conv_bn()` are accepted).

`deployable.pth` holds the trained parameters by their names in our graph (a conv's weight and bias are the
BN-folded ones; other names are the float model's), and `deployable_model` puts them into the graph of a
test-mode quantizer of the float model that reads `quant_info.json` from the same folder (the two files go
together), so its exports carry the trained values.
"""

from __future__ import annotations

import json
import logging
import os
import types
from pathlib import Path
from typing import Any

import torch

from .apis import torch_quantizer
from .codegen import prepare_output_dir, write_atomic
from .errors import InputError, NndctError
from .export.quant_info import QuantInfoError, _tensor_bytes, read_quant_info, write_quant_info
from .quant.qat import attach_tqt, fix_positions, start_from
from .quant.rules import apply_constraints
from .quant.runtime import Mode
from .quant.tqt import TQTQuantizer

__all__ = ["DEPLOYABLE", "QAT_DIR", "QatProcessor"]

log = logging.getLogger("pytorch_nndct")

QAT_DIR = ".vai_qat"  # the original's working folder (in the current directory)
DEPLOYABLE = "deployable.pth"
_QAT_CONFIG = {"include_cle": False, "include_bias_corr": False}


def _unwrap(model: Any) -> Any:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


class QatProcessor:
    """Quantization-aware training of `model` (VAIQ35 4.1). `inputs`: an example input or a tuple of them."""

    def __init__(
        self, model: torch.nn.Module, inputs: Any, bitwidth: int = 8, mix_bit: bool = False, device: Any = None
    ) -> None:
        if isinstance(model, torch.nn.DataParallel | torch.nn.parallel.DistributedDataParallel):
            raise InputError(
                f"QatProcessor got a {type(model).__name__}; it needs the plain model. Fix: pass model.module "
                "(wrap the trainable model QatProcessor returns in DistributedDataParallel instead)."
            )
        if mix_bit:
            raise InputError("QatProcessor(mix_bit=True) is not supported yet. Fix: leave mix_bit False.")
        if device is not None:
            log.warning('the argument "device" is no longer used and will be ignored (as in vai_q_pytorch 3.5)')
        self._float = model
        self._inputs = tuple(inputs) if isinstance(inputs, tuple | list) else (inputs,)
        self._bitwidth = bitwidth
        folder = prepare_output_dir(QAT_DIR)
        self._config = folder / "qat_config.json"
        write_atomic({self._config: json.dumps(_QAT_CONFIG).encode()})
        self._session = self._quantizer("calib", folder)
        self._quantizers: dict[str, TQTQuantizer] | None = None
        self._deployable: torch_quantizer | None = None

    def _quantizer(self, mode: str, output_dir: Path) -> torch_quantizer:
        return torch_quantizer(
            mode, self._float, self._inputs, output_dir=output_dir, bitwidth_w=self._bitwidth,
            bitwidth_a=self._bitwidth, quant_config_file=self._config,
        )  # fmt: skip

    # ------------------------------------------------------------------ training
    def trainable_model(self, calib_dir: str | os.PathLike = "", allow_reused_module: bool = False) -> torch.nn.Module:
        """The generated module with a trainable TQT quantizer on every point, in train mode. `calib_dir`: a
        post-training result (its quant_info.json) to start the thresholds from; else each quantizer starts
        from its first batch (warmup). `allow_reused_module` is accepted: a module called twice is two ops."""
        session = self._session
        model = session.quant_model
        if self._quantizers is None:
            self._quantizers = attach_tqt(model, session.graph, session.plan, session.points)
            _bind_methods(model, self._quantizers)
        if allow_reused_module:
            log.info("allow_reused_module: each call of a reused module is an op of its own in our graph")
        if calib_dir:
            done = start_from(self._quantizers, self._calibration(Path(calib_dir)))
            log.info("QAT thresholds of %d of %d points start from %s", done, len(self._quantizers), calib_dir)
        session.state.mode = Mode.QAT
        return model.train()

    def _calibration(self, folder: Path) -> Any:
        graph = self._session.graph
        try:
            table, _ = read_quant_info(folder, graph.name)
        except QuantInfoError as exc:
            raise InputError(f"calib_dir {str(folder)!r}: {exc}") from None
        if table.graph_md5 and table.graph_md5 != self._session.graph_md5:
            raise InputError(
                f"calib_dir {str(folder)!r} holds the calibration of another model (its graph digest differs from "
                f"{graph.name}'s). Fix: calibrate this model with torch_quantizer('calib', ...) into that folder, "
                "or pass the folder of its own calibration."
            )
        return table

    # ------------------------------------------------------------------ deployment
    def to_deployable(self, trained_model: torch.nn.Module, output_dir: str | os.PathLike) -> torch.nn.Module:
        """Write the trained fix positions (quant_info.json with the DPU constraints applied, test/quant_info.json
        without them) and parameters (deployable.pth) to `output_dir`; returns the deployable quantized model."""
        model = _unwrap(trained_model)
        if self._quantizers is None or model is not self._session.quant_model:
            raise InputError(
                "to_deployable needs the model trainable_model() returned (or it wrapped in "
                "DistributedDataParallel). Fix: call trainable_model() first and train that model."
            )
        if getattr(model, "conv_bn_fused", False):
            raise InputError(
                "to_deployable got a model after fuse_conv_bn(); as in the original it takes the model before. "
                "Fix: export the trained model without calling fuse_conv_bn()."
            )
        session = self._session
        table = session.expected_table()
        for key, fix_pos in fix_positions(self._quantizers).items():
            table.set_fix_pos(key, fix_pos)
        folder = prepare_output_dir(output_dir)
        write_quant_info(table, folder / "test")
        apply_constraints(session.graph, session.plan, table)
        trained = _trained_params(model, session.graph)
        write_atomic({folder / DEPLOYABLE: _tensor_bytes(trained)})
        write_quant_info(table, folder)
        log.info("QAT result written to %s (quant_info.json, test/quant_info.json, %s)", folder, DEPLOYABLE)
        return self.deployable_model(folder)

    def deployable_model(self, src_dir: str | os.PathLike, used_for_xmodel: bool = False) -> torch.nn.Module:
        """The quantized model of `src_dir` (quant_info.json and deployable.pth from to_deployable) in test mode;
        run it once (batch 1 for an .xmodel) before exporting. `used_for_xmodel`: on the CPU."""
        folder = Path(src_dir)
        path = folder / DEPLOYABLE
        if not path.is_file():
            raise InputError(f"{path} does not exist. Fix: write it with to_deployable(trained_model, '{folder}').")
        if used_for_xmodel:
            self._float.to("cpu")
        quantizer = self._quantizer("test", folder)
        trained = torch.load(path, map_location="cpu", weights_only=True)
        unknown = sorted(set(trained) - set(quantizer.graph.params))
        if unknown:
            raise InputError(f"{path} holds parameters {unknown[:5]} this model does not have. Fix: {_SAME_MODEL}")
        before = dict(quantizer.graph.params)
        for key, value in trained.items():
            quantizer.graph.params[key] = value.to(before[key].device, before[key].dtype)
        quantizer._load_changed_params(before)  # the generated module computes with the trained values
        self._deployable = quantizer
        return quantizer.quant_model

    def _require_deployable(self, what: str) -> torch_quantizer:
        if self._deployable is None:
            raise NndctError(
                f"{what} exports the deployable model: call deployable_model(src_dir) (or to_deployable) first and "
                "run it once on a batch-1 input."
            )
        return self._deployable

    def export_xmodel(self, output_dir: str | os.PathLike, deploy_check: bool = False, dynamic_batch: bool = False):
        return self._require_deployable("export_xmodel").export_xmodel(output_dir, deploy_check, dynamic_batch)

    def export_onnx_model(self, output_dir: str | os.PathLike, *args: Any, **kwargs: Any):
        return self._require_deployable("export_onnx_model").export_onnx_model(output_dir, *args, **kwargs)

    def export_torch_script(self, output_dir: str | os.PathLike, verbose: bool = False):
        return self._require_deployable("export_torch_script").export_torch_script(output_dir, verbose)


_SAME_MODEL = "build QatProcessor from the same model and example inputs as the training run."


def _trained_params(model: torch.nn.Module, graph: Any) -> dict[str, torch.Tensor]:
    """The generated module's parameters by their graph names (module_k.<role> is graph.nodes[k]'s)."""
    out = {}
    for k, node in enumerate(graph.nodes):
        sub = getattr(model, f"module_{k}", None)
        for role, key in node.params.items():
            value = getattr(sub, role, None) if sub is not None else None
            if isinstance(value, torch.Tensor):
                out[key] = value.detach().cpu().clone()
    return out


def _bind_methods(model: torch.nn.Module, quantizers: dict[str, TQTQuantizer]) -> None:
    """The original's methods on the trainable model (VAIQ35 4.1)."""
    everyone = list(quantizers.values())

    def each(method: str) -> Any:
        def run(self: torch.nn.Module) -> None:
            for q in everyone:
                getattr(q, method)()

        return run

    def quantizer_parameters(self: torch.nn.Module) -> list[torch.nn.Parameter]:
        return [p for n, p in self.named_parameters() if "log_threshold" in n]

    def non_quantizer_parameters(self: torch.nn.Module) -> list[torch.nn.Parameter]:
        return [p for n, p in self.named_parameters() if "log_threshold" not in n]

    def freeze_bn_stats(self: torch.nn.Module) -> None:
        log.info("freeze_bn_stats: batch-norm is folded into the convolutions here; its statistics do not move")

    def fuse_conv_bn(self: torch.nn.Module) -> None:
        log.info("fuse_conv_bn: batch-norm is folded into the convolutions already")
        self.conv_bn_fused = True

    methods = {
        "quantizer_parameters": quantizer_parameters,
        "non_quantizer_parameters": non_quantizer_parameters,
        "enable_quant": each("enable_quant"),
        "disable_quant": each("disable_quant"),
        "enable_warmup": each("enable_warmup"),
        "disable_warmup": each("disable_warmup"),
        "freeze_quant": each("freeze"),
        "freeze_bn_stats": freeze_bn_stats,
        "fuse_conv_bn": fuse_conv_bn,
    }
    for name, fn in methods.items():
        setattr(model, name, types.MethodType(fn, model))
