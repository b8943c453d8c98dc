"""The machinery behind `torch_quantizer` (apis.py): capture, plan, generated module, points, files.

`QuantSession.build` runs the steps in order (each a small method): capture and optimise the float model,
plan the quantization points, generate and load `<Model>.py`, attach the points and bias correction, and
in test mode load `quant_info.json`. The rest reads the calibrated table back out, widens the most sensitive
activation points (mixed precision, quant/mixed.py), applies fast-finetuned parameters and bias corrections to
the graph that is exported, and remembers the last test input (for deploy-check data and exports that need
one).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from .codegen import load_module, prepare_output_dir, write_module
from .errors import NndctError
from .export.quant_info import (
    QUANT_INFO,
    check_table,
    read_bias_corr,
    read_equalized,
    read_ft_params,
    read_quant_info,
)
from .ir.batch import batch_of
from .ir.graph import Graph
from .ir.ops import Op
from .ir.trace import trace
from .passes import equalization_pairs, equalize_, optimize, pair_scales, scaled_pair
from .quant.bias_corr import BiasCorrector, float_slice
from .quant.calibrated import load_table, table_from_points
from .quant.cle_choice import Format, Segment, segment_errors
from .quant.config import QuantConfig
from .quant.mixed import KEPT_BATCHES, WIDE_BITS, choose, describe, output_error, widen
from .quant.plan import QuantPlan, graph_md5, make_plan, split_float_reads_
from .quant.refine import Refinement, auto, candidates, refine
from .quant.rules import apply_constraints, fix_ties
from .quant.runtime import ActPoint, Mode, QuantState, attach, attach_bias_correction
from .quant.spec import CalibSpec, QuantSpec
from .quant.table import QuantTable

__all__ = ["LAST", "QuantSession"]

log = logging.getLogger("pytorch_nndct")

LAST: dict[str, Any] = {}  # the last quantizer created, for the seed's module-level dump_xmodel()


class QuantSession:
    """One quantized model: its graph, plan, generated module, points and the files in `output_dir`."""

    config: QuantConfig
    output_dir: Path
    device: torch.device | None

    def build(
        self,
        mode: Mode,
        module: torch.nn.Module,
        inputs: Any,
        float_nodes: Mapping[str, str] | None = None,
        custom_quant_ops: frozenset[str] = frozenset(),
    ) -> None:
        """All construction steps; `float_nodes` (node -> reason) stay float (hardware-aware quantization)."""
        self.state = QuantState(mode)
        self.example_inputs = inputs
        self.equalized: list[tuple[str, str]] | None = None  # the equalized conv pairs (None: not decided yet)
        self._cle_pending: list[tuple[str, str]] = []  # calibration: pairs to decide on the first batch
        self.graph = self._capture(module, inputs)
        self.graph_md5 = graph_md5(self.graph)
        self.float_nodes = dict(float_nodes(self.graph) if callable(float_nodes) else float_nodes or {})
        module_types = {name: type(m) for name, m in module.named_modules()}
        self.plan: QuantPlan = make_plan(
            self.graph,
            config=self.config,
            module_types=module_types,
            custom_quant_ops=custom_quant_ops,
            float_nodes=self.float_nodes,
        )
        self._model = load_module(write_module(self.graph, self.output_dir))
        self.points = attach(self._model, self.graph, self.plan, self.state)
        self.corrector: BiasCorrector = attach_bias_correction(self._model, self.graph, self.points)
        if self._cle_pending:  # before bias correction's float pass, which must see the final weights
            self._model.register_forward_pre_hook(self._choose_equalization, with_kwargs=True)
        if mode is Mode.CALIB and self.config.include_bias_corr and self.corrector.layers:
            self._model.register_forward_pre_hook(self._reference_pass, with_kwargs=True)
            self._model.register_forward_hook(self._end_pass)
        if self.device is not None:
            self._model.to(self.device)
        self.table: QuantTable | None = None
        if mode is Mode.TEST:
            self.load_config()
        self._last_inputs: tuple | None = None  # the last test-mode input (deploy_check data, exports)
        self.calib_batches = self.calib_samples = 0  # what calibration has seen
        self.finetuned = False  # fast_finetune() ran (and wrote param.pth)
        self._model.register_forward_pre_hook(self._remember_inputs)
        self._kept: list[tuple[tuple, dict]] = []  # the first calibration batches (mixed precision)
        self.mixed_precision_errors: tuple[float, float] | None = None  # output error before / after widening
        self.refinement: Refinement | None = None  # what output-aware refinement moved (export_quant_config)
        if mode is Mode.CALIB and self.config.mixed_precision_budget:
            self._watch_wide()
        self._refine_off: str | None = None  # why `auto` leaves output-aware refinement off (None: it runs)
        if self.config.output_refinement is None:
            points = len(fix_ties(self.graph, self.plan)) + sum(p.role == "weight" for p in self.plan.params)
            self._refine_off = auto((n.op.value for n in self.graph.nodes), points)
        refining = self.config.output_refinement or (self.config.output_refinement is None and not self._refine_off)
        if mode is Mode.CALIB and (self.config.mixed_precision_budget or refining):
            self._model.register_forward_pre_hook(self._keep_batch, with_kwargs=True)
        LAST["quantizer"] = weakref.ref(self)
        log.info(
            "%s in %s mode: %d parameter and %d output quantization points; %d op(s) computed in float (%d "
            "without a quantized equivalent, listed at capture; the others by design: shapes, indices, ops the "
            "target keeps in float); generated module in %s",
            self.graph.name, mode.name.lower(), len(self.plan.params), len(self.plan.outputs),
            len(self.plan.float_ops), sum(self.graph.node(n).op is Op.ATEN for n in self.plan.float_ops),
            self.output_dir,
        )  # fmt: skip

    # ------------------------------------------------------------------ construction steps
    def _capture(self, module: torch.nn.Module, inputs: Any) -> Graph:
        graph = optimize(trace(module, inputs))
        pairs = equalization_pairs(graph) if self.config.include_cle else []
        names = [(a.name, b.name) for a, b in pairs]
        if names and self.state.mode is Mode.CALIB and self.config.include_bias_corr:
            self._cle_pending = names  # decided on the first calibration batch (quant/cle_choice.py)
        elif names and self.state.mode is Mode.CALIB:  # without bias correction: every pair (see cle_choice)
            self.equalized = names
            if equalize_(graph, pairs):
                log.info("cross-layer equalization balanced %d conv pair(s)", len(pairs))
        elif names:
            chosen = read_equalized(self.output_dir)  # as calibration decided; files before the key: every pair
            self.equalized = names if chosen is None else [p for p in names if p in set(chosen)]
            kept = [p for p, n in zip(pairs, names, strict=True) if n in self.equalized]
            if equalize_(graph, kept):
                log.info("cross-layer equalization balanced %d of %d conv pair(s)", len(kept), len(pairs))
        else:
            self.equalized = []
        split_float_reads_(graph)
        return graph

    # ------------------------------------------------------------------ cross-layer equalization, decided on data
    def _choose_equalization(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        """First calibration batch: keep each equalization pair only where it lowers its segment's error
        (quant/cle_choice.py), equalize the kept ones and load the new weights into the generated module."""
        if self.state.mode is not Mode.CALIB or not self._cle_pending:
            return
        names, self._cle_pending = self._cle_pending, []
        self.state.mode = Mode.FLOAT  # the segments' ops run in float (no calibration statistics)
        try:
            kept, report = self._decide_pairs(module, names, *float_slice(args, kwargs))
        finally:
            self.state.mode = Mode.CALIB
        self.equalized = kept
        before = dict(self.graph.params)
        equalize_(self.graph, [(self.graph.node(a), self.graph.node(b)) for a, b in kept])
        self._load_changed_params(before)
        log.info("cross-layer equalization kept %d of %d conv pair(s), each where it lowers its segment's error "
                 "on the first calibration batch:\n  %s", len(kept), len(names), "\n  ".join(report))  # fmt: skip

    def _decide_pairs(self, module: torch.nn.Module, names: list[tuple[str, str]], args: tuple,
                      kwargs: dict) -> tuple[list[tuple[str, str]], list[str]]:  # fmt: skip
        """One float pass over `args`; each pair is judged when the pass reaches its second conv, from the
        input its first conv saw (then dropped: one pair's input held at a time, not every pair's)."""
        index = {n.name: k for k, n in enumerate(self.graph.nodes)}
        seen: dict[str, tuple] = {}  # conv0: (its input,); the ops between: (their other args, kwargs)
        errors: dict[tuple[str, str], tuple[float, float]] = {}

        def record(name: str, first: bool) -> Callable[..., None]:
            def hook(sub: torch.nn.Module, inputs: tuple, kw: dict, output: Any) -> None:
                seen.setdefault(name, (inputs[0].detach(),) if first else (inputs[1:], kw))

            return hook

        def judge(a: str, b: str) -> Callable[..., None]:
            def hook(sub: torch.nn.Module, inputs: tuple) -> None:
                if a in seen and (a, b) not in errors:
                    errors[(a, b)] = self._pair_errors(self._segment(module, index, a, b, seen), a, b)
                    del seen[a]

            return hook

        hooks = []
        for a, b in names:
            node = self.graph.node(a)
            while node.name != b:
                sub = getattr(module, f"module_{index[node.name]}")
                hooks.append(sub.register_forward_hook(record(node.name, node.name == a), with_kwargs=True))
                node = node.users[0]
            hooks.append(getattr(module, f"module_{index[b]}").register_forward_pre_hook(judge(a, b)))
        try:
            with torch.no_grad():
                module(*args, **kwargs)
        finally:
            for h in hooks:
                h.remove()
        kept = [p for p in names if p in errors and errors[p][1] < errors[p][0]]
        report = [f"{a} -> {b}: {'kept' if (a, b) in kept else 'left out'} (segment error {off:.3g} -> {on:.3g})"
                  for (a, b), (off, on) in errors.items()]  # fmt: skip
        return kept, report

    def _pair_errors(self, segment: Segment, a: str, b: str) -> tuple[float, float]:
        """The segment's error without and with the pair's scales (inf with them where they do not apply)."""
        conv0, conv1 = self.graph.node(a), self.graph.node(b)
        s = pair_scales(self.graph, conv0, conv1)
        original = (self.graph.params[conv0.params["weight"]], self._param(conv0, "bias"),
                    self.graph.params[conv1.params["weight"]])  # fmt: skip
        if s is None:
            return 0.0, float("inf")
        return segment_errors(segment, original, scaled_pair(self.graph, conv0, conv1, s))

    def _param(self, node: Any, role: str) -> torch.Tensor | None:
        key = node.params.get(role)
        return None if key is None else self.graph.params[key]

    def _segment(self, module: torch.nn.Module, index: dict[str, int], a: str, b: str, seen: dict) -> Segment:
        conv0, conv1 = self.graph.node(a), self.graph.node(b)
        m0, m1 = getattr(module, f"module_{index[a]}"), getattr(module, f"module_{index[b]}")
        between = []
        node = conv0.users[0]
        while node.name != b:
            between.append((getattr(module, f"module_{index[node.name]}"), *seen[node.name]))
            node = node.users[0]

        def run_between(x: torch.Tensor) -> torch.Tensor:
            for sub, rest, kw in between:
                x = sub(x, *rest, **kw)
            return x

        formats = {(p.node, p.role): Format(p.spec, p.calib) for p in self.plan.params}
        key = self.plan.tensor_point.get(conv1.inputs[0].name)
        act = self.plan.outputs.get(key) if key is not None else None
        bias1 = self._param(conv1, "bias")
        return Segment(
            x=seen[a][0],
            conv0=lambda x, w, bias: m0._conv_forward(x, w.to(x.device), None if bias is None else bias.to(x.device)),
            between=run_between,
            conv1=lambda x, w: m1._conv_forward(x, w.to(x.device), None if bias1 is None else bias1.to(x.device)),
            weight0=formats.get((a, "weight")),
            weight1=formats.get((b, "weight")),
            activation=None if act is None else Format(act, self.plan.calibs.get(key, CalibSpec())),
        )

    def _load_changed_params(self, before: dict[str, torch.Tensor]) -> None:
        """Copy the graph parameters that changed since `before` into the generated module."""
        index = {n.name: k for k, n in enumerate(self.graph.nodes)}
        for node in self.graph.nodes:
            for role, key in node.params.items():
                if self.graph.params[key] is before.get(key):
                    continue
                param = getattr(getattr(self._model, f"module_{index[node.name]}"), role)
                with torch.no_grad():
                    param.copy_(self.graph.params[key].to(param.device, param.dtype))

    # ------------------------------------------------------------------ state
    @property
    def mode(self) -> Mode:
        return self.state.mode

    @property
    def quant_model(self) -> torch.nn.Module:
        """The generated module with quantization attached; use it in your own loop."""
        return self._model

    def forward_seen(self) -> bool:
        return self._last_inputs is not None

    def _remember_inputs(self, module: torch.nn.Module, args: tuple) -> None:
        if self.state.mode is Mode.TEST:
            self._last_inputs = args
        elif self.state.mode is Mode.CALIB:  # the float reference pass runs in FLOAT mode
            self.calib_batches += 1
            self.calib_samples += batch_of(args) or 1

    def inputs_for_export(self) -> tuple:
        """The last test-mode input (as a tuple), else the example inputs."""
        if self._last_inputs is not None:
            return tuple(self._last_inputs)
        inputs = self.example_inputs
        return inputs if isinstance(inputs, tuple) else (inputs,)

    def require_forward(self, what: str) -> tuple:
        if self._last_inputs is None:
            raise NndctError(
                f"{what} needs data from a forward pass: run quantizer.quant_model(x) in test mode once (the "
                "sample it records is used), then export."
            )
        return tuple(self._last_inputs)

    # ------------------------------------------------------------------ bias correction passes
    def _reference_pass(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        """Calibration with bias correction: run the float model on a slice of the batch first."""
        if self.state.mode is not Mode.CALIB or self.corrector.phase == "float":
            return
        f_args, f_kwargs = float_slice(args, kwargs)
        self.corrector.phase, self.state.mode = "float", Mode.FLOAT
        try:
            self.corrector.reference(lambda: module(*f_args, **f_kwargs))
        finally:
            self.corrector.phase, self.state.mode = "quant", Mode.CALIB

    def _end_pass(self, module: torch.nn.Module, args: tuple, output: Any) -> None:
        if self.corrector.phase == "quant":
            self.corrector.phase = None

    # ------------------------------------------------------------------ parameters as deployed
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

    # ------------------------------------------------------------------ mixed precision (quant/mixed.py)
    def _watch_wide(self) -> None:
        """Calibration with a mixed-precision budget: candidate points also find their 16-bit fix position,
        and the first KEPT_BATCHES batches are kept to measure sensitivity at export."""
        for key, spec in self.plan.outputs.items():
            point = self.points.get(key)
            if isinstance(point, ActPoint) and _widenable(spec):
                point.watch_wide(WIDE_BITS)

    def _keep_batch(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        if self.state.mode is Mode.CALIB and len(self._kept) < KEPT_BATCHES:
            copy = torch.utils._pytree.tree_map(lambda v: v.detach().clone() if isinstance(v, torch.Tensor) else v,
                                                (args, kwargs))  # fmt: skip
            self._kept.append(copy)

    def widen_sensitive(self, table: QuantTable) -> QuantTable:
        """`table` (calibrated, before the DPU constraints) with the most sensitive activation points at 16 bits,
        as many as config.mixed_precision_budget allows; logs the chosen points and their gains."""
        wide = {k: p.wide[1].value for k, p in self.points.items()
                if isinstance(p, ActPoint) and p.wide is not None and p.wide[1].value is not None
                and table.outputs[k].fix_pos is not None}  # fmt: skip
        groups = [g for g in fix_ties(self.graph, self.plan) if all(k in wide for k in g)]

        def constrained(fix_pos: dict[str, int]) -> QuantTable:
            trial = widen(table, fix_pos)
            apply_constraints(self.graph, self.plan, trial, quiet=True)
            return trial

        with self._trials() as run:
            reference = run(None)
            picks, base, final = choose(
                self.config.mixed_precision_budget, groups, wide, lambda fps: output_error(run(constrained(fps)),
                                                                                            reference)
            )  # fmt: skip
        if not picks:
            log.info("mixed precision: no activation point widened (budget %s, %d candidate point(s))",
                     self.config.mixed_precision_budget, len(wide))  # fmt: skip
            return table
        self.mixed_precision_errors = (base, final)
        widened = {k: fp for p in picks for k, fp in p.fix_pos.items()}
        log.info("mixed precision: %d of %d activation points at %d bits\n%s", len(widened), len(wide), WIDE_BITS,
                 describe(picks, base, final, table))  # fmt: skip
        return widen(table, widened)

    # ------------------------------------------------------------------ output-aware refinement (quant/refine.py)
    def refine_steps(self, table: QuantTable) -> QuantTable:
        """`table` (calibrated, before the DPU constraints) with its steps refined against the output error on
        the kept calibration batches; logs what moved."""
        if self.config.output_refinement is None and self._refine_off:
            log.info("output-aware refinement off (%s); set output_refinement: true to run it", self._refine_off)
            return table
        groups = candidates(table, fix_ties(self.graph, self.plan))
        if not groups or not self._kept:
            return table

        def error_of(trial: QuantTable) -> float:
            trial = dataclasses.replace(trial, params=dict(trial.params), outputs=dict(trial.outputs))
            apply_constraints(self.graph, self.plan, trial, quiet=True)
            return output_error(run(trial), reference)

        with self._trials() as run:
            reference = run(None)
            table, record = refine(table, groups, error_of)
        self.refinement = record
        log.info("output-aware refinement: %s", record.describe())
        return table

    @contextmanager
    def _trials(self) -> Iterator[Callable[[QuantTable | None], list[Any]]]:
        """Yields run(table): the kept batches' outputs in test mode with `table` (None: in float); every point,
        the mode and the last test input are restored afterwards."""
        if not self._kept:
            raise NndctError("mixed precision needs calibration batches; run quant_model(x) in calib mode first.")
        saved_mode, saved_last = self.state.mode, self._last_inputs
        acts = {k: (p.spec, p.fix_pos, p.scale) for k, p in self.points.items() if isinstance(p, ActPoint)}
        params = {id(p): (p, dict(p.specs)) for p in self.points.values() if not isinstance(p, ActPoint)}

        def run(table: QuantTable | None) -> list[Any]:
            self.state.mode = Mode.FLOAT if table is None else Mode.TEST
            if table is not None:
                load_table(self.plan, self.points, table)
            with torch.no_grad():
                return [self._model(*args, **kwargs) for args, kwargs in self._kept]

        try:
            yield run
        finally:
            self.state.mode, self._last_inputs = saved_mode, saved_last
            for key, (spec, fix_pos, scale) in acts.items():
                point = self.points[key]
                point.spec, point.fix_pos, point.scale = spec, fix_pos, scale
            for pq, specs in params.values():
                pq.specs = specs

    # ------------------------------------------------------------------ the table
    def expected_table(self) -> QuantTable:
        table = QuantTable(self.graph.name, graph_md5=self.graph_md5, equalized=self.equalized)
        for p in self.plan.params:
            table.params[p.key] = p.spec
        table.outputs.update(self.plan.outputs)
        return table

    def table_from_points(self) -> QuantTable:
        return table_from_points(self.expected_table(), self.plan, self.points)

    def load_config(self) -> None:
        """Test mode: read quant_info.json (and bias_corr.pth / param.pth) and set every point from it."""
        loaded, doc = read_quant_info(self.output_dir, self.graph.name)
        check_table(loaded, self.expected_table(), doc, str(self.output_dir / QUANT_INFO))
        self.table = loaded
        for key in loaded.mixed_precision:  # widened by sensitivity at calibration: the file sets the width
            self.plan.outputs[key] = dataclasses.replace(self.plan.outputs[key], bitwidth=loaded.outputs[key].bitwidth)
        if loaded.fast_finetuned:
            self._set_overrides(read_ft_params(self.output_dir, set(self.graph.params)))
        if loaded.bias_corrected:
            corrections = read_bias_corr(self.output_dir, set(self.corrector.layers))
            for key, value in corrections.items():
                self.corrector.layers[key].value = value.to(self.graph.params[key].device)
        load_table(self.plan, self.points, loaded)

    def export_dir(self, output_dir: str | os.PathLike | None) -> Path:
        return prepare_output_dir(output_dir if output_dir is not None else self.output_dir)


def _widenable(spec: QuantSpec) -> bool:
    """A power-of-two integer point narrower than WIDE_BITS (the DPU's format): a mixed-precision candidate."""
    return spec.is_int and not spec.float_scale and not spec.per_channel and spec.bitwidth < WIDE_BITS
