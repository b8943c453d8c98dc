"""The seed's API (vai_q_pytorch): `torch_quantizer`, a thin facade over trace / optimize / codegen / quant.

quantizer = torch_quantizer("calib", model, (x,))      # or "test", or "float"
quant_model = quantizer.quant_model                     # run your own loop on it
quantizer.export_quant_config()                         # calib: writes quant_info.json
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .codegen import load_module, prepare_output_dir, write_atomic, write_module
from .errors import InputError, NndctError
from .export.deploy import lower, sanitize
from .export.deploy_check import write_deploy_check
from .export.onnx_qdq import build_onnx
from .export.partition import format_partition, partition
from .export.quant_info import (
    QUANT_INFO,
    check_table,
    read_bias_corr,
    read_ft_params,
    read_quant_info,
    write_quant_info,
)
from .export.xmodel import write_xmodel
from .finetune import run_fast_finetune
from .ir.graph import Graph
from .ir.trace import trace
from .passes import equalization_pairs, equalize_, optimize
from .quant.bias_corr import BiasCorrector, float_slice
from .quant.config import ConfigError, QuantConfig, parse_config
from .quant.plan import QuantPlan, graph_md5, make_plan
from .quant.primitives import calibrate
from .quant.rules import apply_constraints
from .quant.runtime import ActPoint, Mode, ParamQuant, QuantState, attach, attach_bias_correction
from .quant.table import QuantTable

__all__ = ["dump_xmodel", "torch_quantizer"]

log = logging.getLogger("pytorch_nndct")

_LAST: dict[str, Any] = {}  # the last quantizer created, for the seed's module-level dump_xmodel()

_MODES = {"calib": Mode.CALIB, 1: Mode.CALIB, "test": Mode.TEST, 2: Mode.TEST, "float": Mode.FLOAT, 0: Mode.FLOAT}


def _parse_mode(quant_mode: Any) -> Mode:
    key = quant_mode.lower() if isinstance(quant_mode, str) else quant_mode
    if isinstance(key, bool) or key not in _MODES:
        raise InputError(
            f"unknown quant_mode {quant_mode!r}. Fix: use 'calib' (or 1) to calibrate, 'test' (or 2) to evaluate "
            "the quantized model, or 'float' (or 0) to run the float graph."
        )
    return _MODES[key]


def _load_state_dict(module: torch.nn.Module, state_dict_file: str | os.PathLike) -> None:
    path = Path(state_dict_file)
    if not path.is_file():
        raise InputError(f"state_dict_file {str(path)!r} does not exist. Fix: pass the path of the float model's .pth.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(
            f"state_dict_file {str(path)!r} cannot be read as a state dict ({type(exc).__name__}: {exc}). Fix: save it "
            "with torch.save(model.state_dict(), path)."
        ) from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise InputError(f"state_dict_file {str(path)!r} holds a {type(state).__name__}, not a state dict.")
    result = module.load_state_dict(state, strict=False)
    problems = []
    if result.missing_keys:
        problems.append(f"missing {len(result.missing_keys)} key(s) such as {result.missing_keys[:3]}")
    if result.unexpected_keys:
        problems.append(f"{len(result.unexpected_keys)} unexpected key(s) such as {result.unexpected_keys[:3]}")
    if problems:
        raise InputError(
            f"state_dict_file {str(path)!r} does not fit {type(module).__name__}: " + "; ".join(problems) + ". Fix: "
            "pass the weights saved from this model class (a 'module.' prefix from DataParallel must be removed)."
        )


def _on_device_of(module: torch.nn.Module, input_args: Any) -> Any:
    """Example inputs moved to the device of the model's parameters (scripts often build them on the CPU)."""
    param = next(iter(module.parameters()), None)
    if param is None:
        return input_args
    return torch.utils._pytree.tree_map(
        lambda v: v.to(param.device) if isinstance(v, torch.Tensor) and v.device != param.device else v, input_args
    )


def _read_config(path: str | os.PathLike, bitwidth_w: int, bitwidth_a: int) -> QuantConfig:
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"quant_config_file {str(file)!r} does not exist. Fix: pass the path of a JSON config file.")
    try:
        doc = json.loads(file.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"quant_config_file {str(file)!r} is not valid JSON: {exc}.") from exc
    return parse_config(doc, bitwidth_w, bitwidth_a, where=str(file))


class torch_quantizer:
    """Build the quantized version of `module` (see the seed README for the workflow)."""

    def __init__(
        self,
        quant_mode: str | int,
        module: torch.nn.Module,
        input_args: Any = None,
        state_dict_file: str | os.PathLike | None = None,
        output_dir: str | os.PathLike = "quantize_result",
        bitwidth: int | None = None,
        device: torch.device | str | None = None,
        quant_config_file: str | os.PathLike | None = None,
        *,
        bitwidth_w: int | None = None,
        bitwidth_a: int | None = None,
        include_bias_corr: bool | None = None,
    ) -> None:
        self.mode = _parse_mode(quant_mode)
        if not isinstance(module, torch.nn.Module):
            raise InputError(
                f"torch_quantizer needs the float model as a torch.nn.Module, got {type(module).__name__}."
            )
        if input_args is None:
            raise InputError(
                "input_args is required: an example input (tensor or tuple) with the real shapes, e.g. "
                "torch.randn(1, 3, 224, 224)."
            )
        self.bitwidth_w = bitwidth_w or bitwidth or 8
        self.bitwidth_a = bitwidth_a or bitwidth or 8
        for name, bw in (("bitwidth_w", self.bitwidth_w), ("bitwidth_a", self.bitwidth_a)):
            if not isinstance(bw, int) or not 2 <= bw <= 16:
                raise InputError(f"{name} must be an integer from 2 to 16, got {bw!r}.")
        self.config: QuantConfig = (
            QuantConfig.default(self.bitwidth_w, self.bitwidth_a)
            if quant_config_file is None
            else _read_config(quant_config_file, self.bitwidth_w, self.bitwidth_a)
        )
        if include_bias_corr is not None:
            self.config.include_bias_corr = bool(include_bias_corr)
        if state_dict_file is not None:
            _load_state_dict(module, state_dict_file)
        self.output_dir = prepare_output_dir(output_dir)
        self.device = torch.device(device) if device is not None else None

        self.graph = optimize(trace(module, _on_device_of(module, input_args)))
        if self.config.include_cle:
            pairs = len(equalization_pairs(self.graph))
            if equalize_(self.graph):
                log.info("pytorch_nndct: cross-layer equalization balanced %d conv pair(s)", pairs)
        self.graph_md5 = graph_md5(self.graph)
        module_types = {name: type(m) for name, m in module.named_modules()}
        self.plan: QuantPlan = make_plan(self.graph, config=self.config, module_types=module_types)
        self._model = load_module(write_module(self.graph, self.output_dir))
        self.state = QuantState(self.mode)
        self.points = attach(self._model, self.graph, self.plan, self.state)
        self.corrector: BiasCorrector = attach_bias_correction(self._model, self.graph, self.points)
        if self.mode is Mode.CALIB and self.config.include_bias_corr and self.corrector.layers:
            self._model.register_forward_pre_hook(self._reference_pass, with_kwargs=True)
            self._model.register_forward_hook(self._end_pass)
        if self.device is not None:
            self._model.to(self.device)
        self.table: QuantTable | None = None
        if self.mode is Mode.TEST:
            self._load_config()
        _LAST["quantizer"] = weakref.ref(self)
        self._last_inputs: tuple | None = None  # the last test-mode input, for deploy_check data
        self._model.register_forward_pre_hook(self._remember_inputs)
        n_param = len(self.plan.params)
        log.info(
            "pytorch_nndct: %s in %s mode: %d parameter and %d output quantization points, %d op(s) in float; "
            "generated module in %s",
            self.graph.name,
            self.mode.name.lower(),
            n_param,
            len(self.plan.outputs),
            len(self.plan.float_ops),
            self.output_dir,
        )

    # ------------------------------------------------------------------ the seed's interface
    @property
    def quant_model(self) -> torch.nn.Module:
        """The generated module with quantization attached; use it in your own loop."""
        return self._model

    def export_quant_config(self) -> Path:
        """Calibration: write quant_info.json from what the forward passes saw. Test mode: keeps the file."""
        path = self.output_dir / QUANT_INFO
        if self.mode is not Mode.CALIB:
            log.info("pytorch_nndct: %s mode: quant_info.json is left as calibrated (%s)", self.mode.name.lower(), path)
            return path
        table = self._table_from_points()
        corrections = self.corrector.values() if self.config.include_bias_corr else {}
        overrides = self._overrides()
        if corrections:
            table.bias_corrected = True
            calibs = {p.key: p.calib for p in self.plan.params}
            for key, value in corrections.items():  # the corrected bias may need another fix position
                spec = table.params[key]
                corrected = overrides.get(key, self.graph.params[key]).detach().cpu() + value
                table.params[key] = spec.with_fix_pos(calibrate(corrected, spec, calibs[key]))
            log.info("pytorch_nndct: bias correction: %s", BiasCorrector.describe(corrections))
        table.fast_finetuned = bool(overrides)
        apply_constraints(self.graph, self.plan, table)
        written = write_quant_info(table, self.output_dir, corrections)
        log.info("pytorch_nndct: wrote %s (%d params, %d outputs)", written, len(table.params), len(table.outputs))
        return written

    def fast_finetune(self, run_fn: Callable[..., Any], run_args: tuple = ()) -> Path:
        """Calibration: AdaQuant, layer by layer (SPEC 2.5); writes param.pth and returns its path.

        `run_fn(*run_args)` runs the quantized model over finetuning data and returns the loss (a number,
        or a tuple whose last item is the loss, like the seed's evaluate()). It is called 2 + 2 x layers
        times. Only the layers whose change lowers that loss keep it.
        """
        if self.mode is not Mode.CALIB:
            raise NndctError(
                f"fast_finetune() runs in calib mode, this quantizer is in {self.mode.name.lower()} mode. Fix: call "
                "it on the calib quantizer; in test mode call load_ft_param() (it is also loaded automatically)."
            )
        return run_fast_finetune(self, run_fn, run_args)

    def load_ft_param(self) -> None:
        """Test mode: use the parameters fast_finetune() wrote (param.pth); done automatically when
        quant_info.json says the model was fast-finetuned."""
        values = read_ft_params(self.output_dir, set(self.graph.params))
        self._set_overrides(values)
        log.info("pytorch_nndct: loaded %d fast-finetuned parameter(s) from %s", len(values), self.output_dir)

    def export_xmodel(
        self, output_dir: str | os.PathLike | None = None, deploy_check: bool = False, batch_size: int | None = None
    ) -> Path:
        """Test mode: write `<Model>_int.xmodel` (XIR, NHWC, fix ops) at `batch_size` (default 1); returns its path.

        Ops with no XIR equivalent are written as custom ops and listed in a warning. No forward pass at
        batch size 1 is needed (the original needed one).
        """
        if self.mode is not Mode.TEST:
            raise NndctError(
                f"export_xmodel() needs the calibrated model, but this quantizer is in {self.mode.name.lower()} mode. "
                "Fix: calibrate and export_quant_config() first, then create the quantizer with quant_mode='test' "
                "and export from it."
            )
        if self.config.target_device != "DPU":
            raise NndctError(
                f"export_xmodel() writes a DPU model, but the quant config targets {self.config.target_device}. "
                "Fix: export with export_onnx_model(), or calibrate with target_device DPU."
            )
        deploy = lower(self.export_graph(), self.plan, self.table, batch_size)
        out_dir = output_dir if output_dir is not None else self.output_dir
        check_inputs = self._deploy_check_inputs(deploy) if deploy_check else None
        path = write_xmodel(deploy, out_dir)
        if check_inputs is not None:
            folder = write_deploy_check(deploy, check_inputs, out_dir)
            log.info("pytorch_nndct: wrote deploy_check data to %s", folder)
        if deploy.custom:
            log.warning(
                "pytorch_nndct: %d op(s) have no XIR equivalent and were written as custom ops: %s",
                len(deploy.custom),
                "; ".join(f"{k} ({v})" for k, v in list(deploy.custom.items())[:10]),
            )
        log.info("pytorch_nndct: wrote %s (%d ops)", path, len(deploy.ops))
        return path

    def export_onnx_model(self, output_dir: str | os.PathLike | None = None) -> Path:
        """Test mode: write `<Model>_int.onnx` with QuantizeLinear/DequantizeLinear pairs (SPEC 6)."""
        if self.mode is not Mode.TEST:
            raise NndctError(
                f"export_onnx_model() needs the calibrated model, but this quantizer is in {self.mode.name.lower()} "
                "mode. Fix: create the quantizer with quant_mode='test' after calibration and export from it."
            )
        if self.config.target_device == "DPU":
            log.warning(
                "pytorch_nndct: this model was quantized for the DPU, which rounds activations half up; "
                "onnxruntime's QuantizeLinear rounds ties to even, so its outputs can differ from the simulation "
                "by a few LSB. For an ONNX model equal to the simulation, quantize with target_device CPU and "
                "round_mode half_even for inputs and activations (see the README's config section)."
            )
        model = build_onnx(self.export_graph(), self.plan, self.table)
        out = prepare_output_dir(output_dir if output_dir is not None else self.output_dir)
        path = out / f"{sanitize(self.graph.name)}_int.onnx"
        write_atomic({path: model.SerializeToString()})
        log.info("pytorch_nndct: wrote %s", path)
        return path

    def partition_report(self, batch_size: int | None = None) -> str:
        """Which ops a DPU would run and which stay on the CPU, with the reason for each (text table)."""
        table = self.table if self.table is not None else self._expected_table()
        graph = self.export_graph()
        deploy = lower(graph, self.plan, table, batch_size)
        return format_partition(partition(graph, self.plan, deploy))

    # ------------------------------------------------------------------ internals
    def _reference_pass(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        """Calibration with bias correction: run the float model on a slice of the batch first."""
        if self.state.mode is not Mode.CALIB or self.corrector.phase == "float":
            return
        f_args, f_kwargs = float_slice(args, kwargs)
        self.corrector.phase, self.state.mode = "float", Mode.FLOAT
        try:
            with torch.no_grad():
                module(*f_args, **f_kwargs)
        finally:
            self.corrector.phase, self.state.mode = "quant", Mode.CALIB

    def _end_pass(self, module: torch.nn.Module, args: tuple, output: Any) -> None:
        if self.corrector.phase == "quant":
            self.corrector.phase = None

    def export_graph(self) -> Graph:
        """The optimized graph as it deploys: fast-finetuned parameters and bias corrections applied."""
        values = {k: c.value for k, c in self.corrector.layers.items() if c.value is not None}
        overrides = self._overrides()
        if not values and not overrides:
            return self.graph
        params = dict(self.graph.params)
        for key, value in overrides.items():
            params[key] = value.to(params[key].device, params[key].dtype)
        for key, value in values.items():
            params[key] = params[key] + value.to(params[key].device, params[key].dtype)
        return dataclasses.replace(self.graph, params=params)

    def _overrides(self) -> dict[str, torch.Tensor]:
        out = {}
        for p in self.plan.params:
            value = self.points[p.key].overrides.get(p.role)
            if value is not None:
                out[p.key] = value
        return out

    def _set_overrides(self, values: dict[str, torch.Tensor]) -> None:
        for p in self.plan.params:
            if p.key in values:
                self.points[p.key].overrides[p.role] = values[p.key].to(self.graph.params[p.key].device)

    def _deploy_check_inputs(self, deploy: Any) -> list[torch.Tensor]:
        if self._last_inputs is None:
            raise NndctError(
                "deploy_check needs one input to record: run quantizer.quant_model(x) in test mode once, then export."
            )
        leaves, _ = torch.utils._pytree.tree_flatten(self._last_inputs)
        tensors = [t.detach().cpu() for t in leaves if isinstance(t, torch.Tensor)]
        batch = next(op.shape[0] for op in deploy.ops if op.type == "data")
        if any(t.shape[0] < batch for t in tensors):
            raise NndctError(
                f"deploy_check at batch size {batch} needs a test-mode forward with at least {batch} samples"
            )
        return [t[:batch] for t in tensors]

    def _remember_inputs(self, module: torch.nn.Module, args: tuple) -> None:
        if self.state.mode is Mode.TEST:
            self._last_inputs = args

    def _expected_table(self) -> QuantTable:
        table = QuantTable(self.graph.name, graph_md5=self.graph_md5)
        for p in self.plan.params:
            table.params[p.key] = p.spec
        table.outputs.update(self.plan.outputs)
        return table

    def _table_from_points(self) -> QuantTable:
        table = self._expected_table()
        missing_params = []
        for p in self.plan.params:
            pq: ParamQuant = self.points[p.key]
            fp = pq.specs[p.role].fix_pos
            if fp is None and not p.spec.float_scale:
                missing_params.append(p.key)
            table.params[p.key] = p.spec.with_fix_pos(fp)
        seen = 0
        for key, spec in self.plan.outputs.items():
            point: ActPoint | None = self.points.get(key)
            fp = point.observer.value if point is not None else None
            seen += fp is not None
            table.outputs[key] = spec.with_fix_pos(fp)
        if (self.plan.outputs and seen == 0) or (missing_params and len(missing_params) == len(self.plan.params)):
            raise NndctError(
                "export_quant_config() was called before any calibration forward pass. Fix: run "
                "quantizer.quant_model(x) on calibration data (about 100 to 1000 images) first."
            )
        unseen = [k for k, s in table.outputs.items() if s.fix_pos is None]
        if unseen:
            log.warning(
                "pytorch_nndct: %d output(s) were never reached during calibration: %s", len(unseen), unseen[:5]
            )
        return table

    def _load_config(self) -> None:
        loaded, doc = read_quant_info(self.output_dir, self.graph.name)
        check_table(loaded, self._expected_table(), doc, str(self.output_dir / QUANT_INFO))
        self.table = loaded
        if loaded.fast_finetuned:
            self._set_overrides(read_ft_params(self.output_dir, set(self.graph.params)))
        if loaded.bias_corrected:
            corrections = read_bias_corr(self.output_dir, set(self.corrector.layers))
            for key, value in corrections.items():
                self.corrector.layers[key].value = value.to(self.graph.params[key].device)
        for p in self.plan.params:
            pq: ParamQuant = self.points[p.key]
            pq.specs[p.role] = p.spec.with_fix_pos(loaded.params[p.key].fix_pos)
        for key, point in self.points.items():
            if isinstance(point, ActPoint):
                point.fix_pos = loaded.outputs[key].fix_pos


def dump_xmodel(output_dir: str | os.PathLike = "quantize_result", deploy_check: bool = False) -> Path:
    """The seed's module-level export: `export_xmodel` of the last quantizer created (in test mode)."""
    ref = _LAST.get("quantizer")
    quantizer = ref() if ref is not None else None
    if quantizer is None:
        raise NndctError("dump_xmodel() needs a quantizer: create torch_quantizer('test', ...) first.")
    return quantizer.export_xmodel(output_dir, deploy_check)
