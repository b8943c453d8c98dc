"""The original's API (vai_q_pytorch 1.2 to 3.5): `torch_quantizer`, `dump_xmodel`, `Inspector`, a facade over
capture / plan / codegen / quant / export (the machinery is in quantizer.py and the packages it calls).

quantizer = torch_quantizer("calib", model, (x,))      # or "test", or "float"
quant_model = quantizer.quant_model                     # run your own loop on it
quantizer.export_quant_config()                         # calib: writes quant_info.json
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .codegen import write_atomic
from .errors import InputError, NndctError
from .export.deploy import lower, sanitize
from .export.deploy_check import write_deploy_check
from .export.onnx_qdq import build_onnx
from .export.onnx_tools import check_onnx, dump_onnx_layers, simplify_onnx
from .export.partition import format_partition, partition
from .export.quant_info import QUANT_INFO, read_ft_params, write_quant_info
from .export.torchscript import write_torch_script
from .export.xmodel import write_xmodel
from .finetune import run_fast_finetune
from .ir.custom import registered_custom_ops
from .options import (
    bind_inputs,
    check_app_deploy,
    check_unsupported,
    resolve_device,
    resolve_positional,
)
from .quant.bias_corr import BiasCorrector
from .quant.config import ConfigError, QuantConfig, parse_config
from .quant.mixed import check_budget
from .quant.primitives import calibrate
from .quant.rules import apply_constraints
from .quant.runtime import Mode
from .quantizer import LAST, QuantSession
from .targets import Inspector, assign_devices, cpu_ops, get_target

__all__ = ["Inspector", "QatProcessor", "dump_xmodel", "load_vai_ops", "torch_quantizer"]

log = logging.getLogger("pytorch_nndct")

_MODES = {"calib": Mode.CALIB, 1: Mode.CALIB, "test": Mode.TEST, 2: Mode.TEST, "float": Mode.FLOAT, 0: Mode.FLOAT}
_FORMATS = ("xmodel", "onnx", "torch_script")
ADVISED_CALIB_SAMPLES = 100  # the README: "about 100 to 1000 images"


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


def _the_module(module: Any) -> torch.nn.Module:
    if isinstance(module, list | tuple):
        raise InputError(
            "torch_quantizer got a list of modules; quantizing several models in one quantizer is not supported "
            "yet. Fix: create one torch_quantizer per model (each with its own output_dir)."
        )
    if not isinstance(module, torch.nn.Module):
        raise InputError(f"torch_quantizer needs the float model as a torch.nn.Module, got {type(module).__name__}.")
    if isinstance(module, torch.nn.DataParallel | torch.nn.parallel.DistributedDataParallel):
        log.warning("the model is wrapped in %s; quantizing its .module", type(module).__name__)
        return module.module
    return module


def _custom_ops(names: Any) -> frozenset[str]:
    if names is None:
        return frozenset()
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise InputError(f"custom_quant_ops must be a list of op type names, got {names!r}.")
    registered = registered_custom_ops()
    unknown = sorted(set(names) - set(registered))
    if unknown:
        known = ", ".join(sorted(registered)) or "none so far"
        raise InputError(
            f"custom_quant_ops names {unknown}, which no register_custom_op call registered (registered: {known}). "
            "Fix: decorate the op's function with @pytorch_nndct.utils.register_custom_op('<op_type>') before "
            "creating the quantizer."
        )
    return frozenset(names)


class torch_quantizer(QuantSession):
    """Build the quantized version of `module` (see the README for the workflow); vai_q_pytorch 3.5's signature.

    1.2-era positional calls `(quant_mode, module, input_args, state_dict_file, output_dir, bitwidth_w,
    bitwidth_a)` also work: a path in fourth place is read that way. `bitwidth_w` / `bitwidth_a` stay as
    keywords. `device=None` keeps the model where its parameters are. `target` (a DPU name or fingerprint)
    keeps what that DPU cannot run in float (hardware-aware quantization) unless a `quant_config_file` is
    given. `dynamo=True` is accepted: our capture is torch.export-based already. `mixed_precision_budget` (ours:
    an int count or a float fraction of the activation points, also a config key) keeps the points whose
    16-bit width lowers the output error most at 16 bits (measured at export_quant_config(); quant/mixed.py).
    """

    def __init__(
        self,
        quant_mode: str | int,
        module: torch.nn.Module,
        input_args: Any = None,
        input_kwargs: dict | None = None,
        state_dict_file: str | os.PathLike | None = None,
        output_dir: str | os.PathLike = "quantize_result",
        bitwidth: int | None = None,
        mix_bit: bool = False,
        device: torch.device | str | None = None,
        lstm: bool = False,
        app_deploy: str = "CV",
        qat_proc: bool = False,
        custom_quant_ops: list[str] | None = None,
        quant_config_file: str | os.PathLike | None = None,
        target: str | None = None,
        dynamo: bool = False,
        *,
        bitwidth_w: int | None = None,
        bitwidth_a: int | None = None,
        include_bias_corr: bool | None = None,
        mixed_precision_budget: int | float | None = None,
    ) -> None:
        mode = _parse_mode(quant_mode)
        input_kwargs, legacy = resolve_positional(
            input_kwargs, state_dict_file, output_dir, bitwidth, bitwidth_w, bitwidth_a
        )
        check_unsupported(lstm=lstm, mix_bit=mix_bit, qat_proc=qat_proc)
        check_app_deploy(app_deploy)
        module = _the_module(module)
        if input_args is None and not input_kwargs:
            raise InputError(
                "input_args is required: an example input (tensor or tuple) with the real shapes, e.g. "
                "torch.randn(1, 3, 224, 224)."
            )
        inputs = bind_inputs(module, input_args, input_kwargs)
        self.bitwidth_w = legacy.bitwidth_w or 8
        self.bitwidth_a = legacy.bitwidth_a or 8
        for name, bw in (("bitwidth_w", self.bitwidth_w), ("bitwidth_a", self.bitwidth_a)):
            if not isinstance(bw, int) or isinstance(bw, bool) or not 2 <= bw <= 16:
                raise InputError(f"{name} must be an integer from 2 to 16, got {bw!r}.")
        self.config = (
            QuantConfig.default(self.bitwidth_w, self.bitwidth_a)
            if quant_config_file is None
            else _read_config(quant_config_file, self.bitwidth_w, self.bitwidth_a)
        )
        if include_bias_corr is not None:
            self.config.include_bias_corr = bool(include_bias_corr)
        if mixed_precision_budget is not None:
            self.config.mixed_precision_budget = check_budget(mixed_precision_budget)
        self.target = self._hardware_target(target, quant_config_file)
        if self.target is not None and self.config.mixed_precision_budget:
            raise InputError(
                f"mixed_precision_budget keeps activations at 16 bits, but target {target!r} computes 8-bit feature "
                "maps (every DPU of the target table does). Fix: drop target= to quantize for the simulation, ONNX "
                "or a 16-bit-capable device, or drop mixed_precision_budget for this DPU."
            )
        custom = _custom_ops(custom_quant_ops)
        if legacy.state_dict_file is not None:
            _load_state_dict(module, legacy.state_dict_file)
        self.output_dir = self.export_dir(legacy.output_dir)
        self.device = resolve_device(device)
        if self.device is not None:
            module.to(self.device)
        if dynamo:
            log.info("dynamo=True: the model is captured with torch.export (as always)")
        self.build(mode, module, _on_device_of(module, inputs), self._float_nodes(), custom)

    def _hardware_target(self, target: str | None, quant_config_file: Any) -> Any:
        if target is None:
            return None
        if quant_config_file is not None:
            log.warning(
                "the hardware-aware quantization is turned off by quant_config_file; target %r is ignored.",
                target,
            )
            return None
        return get_target(target)

    def _float_nodes(self) -> Callable | None:
        if self.target is None:
            return None
        target = self.target
        return lambda graph: cpu_ops(graph, target)

    # ------------------------------------------------------------------ 3.5 workflow methods
    def quantize(self, run_fn: Callable[..., Any], run_args: tuple = (), ft_run_args: tuple | None = None) -> Path:
        """Calibration in one call: optional fast finetune on `ft_run_args`, `run_fn(*run_args)` over the
        calibration data, then export_quant_config(); returns quant_info.json's path."""
        self._require_mode(Mode.CALIB, "quantize()", "create the quantizer with quant_mode='calib'")
        if ft_run_args is not None:
            self.fast_finetune(run_fn, ft_run_args)
        run_fn(*run_args)
        return self.export_quant_config()

    def test(self, run_fn: Callable[..., Any], run_args: tuple = ()) -> Any:
        """Evaluate the quantized model: test mode (switching from calib after quantize()), `run_fn(*run_args)`;
        returns and logs what it returns."""
        self._to_test_mode()
        result = run_fn(*run_args)
        log.info("test result: %s", result)
        return result

    def deploy(self, run_fn: Callable[..., Any], run_args: tuple = (), fmt: str = "xmodel") -> Path:
        """Test mode, one run of `run_fn(*run_args)`, then the export `fmt` ('xmodel', 'onnx' or
        'torch_script') into the output dir; returns the written file."""
        if fmt not in _FORMATS:
            raise InputError(f"deploy(fmt={fmt!r}): fmt must be one of {', '.join(_FORMATS)}.")
        self._to_test_mode()
        run_fn(*run_args)
        if fmt == "xmodel":
            return self.export_xmodel()
        if fmt == "onnx":
            return self.export_onnx_model()
        return self._write_torch_script(None, False)[0]

    @property
    def deploy_model(self) -> None:
        """Only quantization-aware training has a deployable model (as in the original); None here."""
        log.warning("only quantization-aware training has a deployable model; returning None")
        return None

    # ------------------------------------------------------------------ calibration results
    def export_quant_config(self) -> Path:
        """Calibration: write quant_info.json from what the forward passes saw. Test mode: keeps the file."""
        path = self.output_dir / QUANT_INFO
        if self.mode is not Mode.CALIB:
            log.info("%s mode: quant_info.json is left as calibrated (%s)", self.mode.name.lower(), path)
            return path
        if self.calib_samples < ADVISED_CALIB_SAMPLES:
            log.warning(
                "calibrated on %d sample(s) in %d batch(es); %d to 1000 representative samples are advised: fix "
                "positions and bias corrections from fewer may not represent your data",
                self.calib_samples, self.calib_batches, ADVISED_CALIB_SAMPLES,
            )  # fmt: skip
        table = self.table_from_points()
        corrections = self.corrector.values() if self.config.include_bias_corr else {}
        overrides = self._overrides()
        if corrections:
            table.bias_corrected = True
            calibs = {p.key: p.calib for p in self.plan.params}
            for key, value in corrections.items():  # the corrected bias may need another fix position
                spec = table.params[key]
                corrected = overrides.get(key, self.graph.params[key]).detach().cpu() + value
                table.params[key] = spec.with_fix_pos(calibrate(corrected, spec, calibs[key]))
            log.info("bias correction: %s", BiasCorrector.describe(corrections))
        table.fast_finetuned = bool(overrides) or self.finetuned  # param.pth is written even if no layer was kept
        if self.config.output_refinement is not False:
            table = self.refine_steps(table)
        if self.config.mixed_precision_budget:
            table = self.widen_sensitive(table)
        apply_constraints(self.graph, self.plan, table)
        written = write_quant_info(table, self.output_dir, corrections)
        log.info("wrote %s (%d params, %d outputs)", written, len(table.params), len(table.outputs))
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
        path = run_fast_finetune(self, run_fn, run_args)
        self.finetuned = True
        return path

    def load_ft_param(self) -> None:
        """Test mode: use the parameters fast_finetune() wrote (param.pth); done automatically when
        quant_info.json says the model was fast-finetuned."""
        values = read_ft_params(self.output_dir, set(self.graph.params))
        self._set_overrides(values)
        log.info("loaded %d fast-finetuned parameter(s) from %s", len(values), self.output_dir)

    # ------------------------------------------------------------------ exports
    def export_xmodel(
        self,
        output_dir: str | os.PathLike | None = None,
        deploy_check: bool = False,
        dynamic_batch: bool = False,
        *,
        batch_size: int | None = None,
    ) -> Path:
        """Test mode: write `<Model>_int.xmodel` (XIR, NHWC, fix ops) at `batch_size` (default 1); returns its path.

        `output_dir` defaults to the constructor's. Ops with no XIR equivalent are written as custom ops and
        listed in a warning. No forward pass is needed (the original needed one at batch size 1), except for
        `deploy_check` data, which records the last test-mode input. `dynamic_batch` is accepted for the
        original's signature: an XIR graph has fixed shapes and the compiler sets the batch.
        """
        self._require_mode(Mode.TEST, "export_xmodel()", "calibrate, then create the quantizer in 'test' mode")
        if self.config.target_device != "DPU":
            raise NndctError(
                f"export_xmodel() writes a DPU model, but the quant config targets {self.config.target_device}. "
                "Fix: export with export_onnx_model(), or calibrate with target_device DPU."
            )
        check_inputs = self.require_forward("export_xmodel(deploy_check=True)") if deploy_check else None
        graph = self.export_graph()
        deploy = lower(graph, self.plan, self.table, batch_size)
        out = self.export_dir(output_dir)
        path = write_xmodel(deploy, out, self._devices(graph))
        if check_inputs is not None:
            folder = write_deploy_check(deploy, self._deploy_check_inputs(deploy, check_inputs), out)
            log.info("wrote deploy_check data to %s", folder)
        if deploy.custom:
            log.warning(
                "%d op(s) have no XIR equivalent and were written as custom ops: %s",
                len(deploy.custom),
                "; ".join(f"{k} ({v})" for k, v in list(deploy.custom.items())[:10]),
            )
        log.info("wrote %s (%d ops)", path, len(deploy.ops))
        return path

    def export_onnx_model(
        self,
        output_dir: str | os.PathLike | None = None,
        verbose: bool = False,
        dynamic_batch: bool = False,
        opset_version: int | None = None,
        native_onnx: bool = True,
        dump_layers: bool = False,
        check_model: bool = False,
        opt_graph: bool = False,
    ) -> Path:
        """Test mode: write `<Model>_int.onnx` with QuantizeLinear/DequantizeLinear pairs (SPEC 6).

        The batch axis is dynamic whenever the capture kept it symbolic (`dynamic_batch=True` insists on it).
        `native_onnx=False` still writes standard Q/DQ (as the original does on torch >= 2.0). `dump_layers`
        writes every layer's onnxruntime output for the last test input to `onnx_layer_output/`;
        `check_model` runs onnxruntime on it and compares with the simulation; `opt_graph` runs onnxsim.
        """
        self._require_mode(Mode.TEST, "export_onnx_model()", "create the quantizer with quant_mode='test'")
        if self.config.target_device == "DPU":
            log.warning(
                "this model was quantized for the DPU, which rounds activations half up; "
                "onnxruntime's QuantizeLinear rounds ties to even, so its outputs can differ from the simulation "
                "by a few LSB. For an ONNX model equal to the simulation, quantize with target_device CPU and "
                "round_mode half_even for inputs and activations (see the README's config section)."
            )
        if not native_onnx:
            log.info("native_onnx=False: writing standard QuantizeLinear/DequantizeLinear")
        sample = (
            self.require_forward("export_onnx_model(dump_layers or check_model)")
            if (dump_layers or check_model)
            else None
        )
        graph = self.export_graph()
        if dynamic_batch and any(isinstance(d, int) for n in graph.inputs for d in n.meta.shape[:1]):
            raise NndctError(
                "export_onnx_model(dynamic_batch=True): the model was captured with a fixed batch size, so the ONNX "
                "batch axis cannot be dynamic. Fix: see the capture warning for the line that fixes the batch."
            )
        opset = None if opset_version == -1 else opset_version  # -1: the original's "latest stable"
        model = build_onnx(graph, self.plan, self.table, opset=opset)  # None: the config's, else 17
        if opt_graph:
            model = simplify_onnx(model)
        if verbose:
            import onnx

            log.info("ONNX graph:\n%s", onnx.printer.to_text(model.graph))
        out = self.export_dir(output_dir)
        path = out / f"{sanitize(self.graph.name)}_int.onnx"
        write_atomic({path: model.SerializeToString()})
        log.info("wrote %s", path)
        if dump_layers:
            folder = dump_onnx_layers(model, sample, out / "onnx_layer_output")
            log.info("wrote onnxruntime layer outputs to %s", folder)
        if check_model:
            check_onnx(model, sample, self.quant_model)
        return path

    def export_torch_script(
        self, output_dir: str | os.PathLike | None = None, verbose: bool = False
    ) -> torch.jit.ScriptModule:
        """Test mode: write `<Model>_int.pt`, the quantized model traced to TorchScript (bit-exact with the
        simulation; loads with torch.jit.load alone); returns the ScriptModule. Traced on the last test-mode
        input, else on the example inputs."""
        return self._write_torch_script(output_dir, verbose)[1]

    def _write_torch_script(self, output_dir: Any, verbose: bool) -> tuple[Path, torch.jit.ScriptModule]:
        self._require_mode(Mode.TEST, "export_torch_script()", "create the quantizer with quant_mode='test'")
        path, traced = write_torch_script(
            self.quant_model, self.inputs_for_export(), self.export_dir(output_dir), sanitize(self.graph.name), verbose
        )
        log.info("wrote %s", path)
        return path, traced

    def export_traced_torch_script(
        self, output_dir: str | os.PathLike | None = None, verbose: bool = False
    ) -> torch.jit.ScriptModule:
        """Deprecated in the original: the same as export_torch_script()."""
        log.warning('"export_traced_torch_script" is deprecated; use "export_torch_script" instead.')
        return self.export_torch_script(output_dir, verbose)

    def partition_report(self, batch_size: int | None = None) -> str:
        """Which ops a DPU would run and which stay on the CPU, with the reason for each (text table)."""
        table = self.table if self.table is not None else self.expected_table()
        graph = self.export_graph()
        deploy = lower(graph, self.plan, table, batch_size)
        return format_partition(partition(graph, self.plan, deploy, target=self.target))

    def _devices(self, graph: Any) -> dict[str, str] | None:
        """With a target: each node's device, for the .xmodel's subgraphs."""
        if self.target is None:
            return None
        return {name: a.device.value for name, a in assign_devices(graph, self.target).items()}

    # ------------------------------------------------------------------ internals
    def _require_mode(self, mode: Mode, what: str, fix: str) -> None:
        if self.mode is not mode:
            need = "the calibrated model (test mode)" if mode is Mode.TEST else f"{mode.name.lower()} mode"
            raise NndctError(f"{what} needs {need}, but this quantizer is in {self.mode.name.lower()} mode. "
                             f"Fix: {fix}.")  # fmt: skip

    def _to_test_mode(self) -> None:
        if self.mode is Mode.TEST:
            return
        if self.mode is Mode.FLOAT:
            raise NndctError("test() and deploy() need a calibrated model; this quantizer is in float mode.")
        if not (self.output_dir / QUANT_INFO).is_file():
            raise NndctError(
                f"test() needs {self.output_dir / QUANT_INFO}: call quantize() (or export_quant_config() after "
                "calibrating) first."
            )
        self.state.mode = Mode.TEST
        self.load_config()

    def _deploy_check_inputs(self, deploy: Any, sample: tuple) -> list[torch.Tensor]:
        leaves, _ = torch.utils._pytree.tree_flatten(sample)
        tensors = [t.detach().cpu() for t in leaves if isinstance(t, torch.Tensor)]
        batch = next(op.shape[0] for op in deploy.ops if op.type == "data")
        if any(t.shape[0] < batch for t in tensors):
            raise NndctError(
                f"deploy_check at batch size {batch} needs a test-mode forward with at least {batch} samples"
            )
        return [t[:batch] for t in tensors]


def dump_xmodel(output_dir: str | os.PathLike = "quantize_result", deploy_check: bool = False) -> Path:
    """The seed's module-level export: `export_xmodel` of the last quantizer created (in test mode)."""
    ref = LAST.get("quantizer")
    quantizer = ref() if ref is not None else None
    if quantizer is None:
        raise NndctError("dump_xmodel() needs a quantizer: create torch_quantizer('test', ...) first.")
    return quantizer.export_xmodel(output_dir, deploy_check)


def load_vai_ops() -> None:
    """The original registers onnxruntime ops for its non-native ONNX export; ours is always native Q/DQ, so
    there is nothing to register (kept so 3.5 scripts that call it run unchanged)."""
    log.info("load_vai_ops(): our ONNX exports use standard Q/DQ ops; nothing to register")


from .qat_processor import QatProcessor  # noqa: E402  (it builds on torch_quantizer above)
