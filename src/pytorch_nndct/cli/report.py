"""The quantization report: per-layer fix positions, value ranges and SQNR, float ops, the partition, plots.

One self-contained HTML file (plots embedded as PNG) and the same tables as text. Statistics come from
one batch run twice through the quantized module: in float mode (the float values at every point) and
in test mode (the quantized values). Per point: "SQNR here" quantizes only this point's float values
(its own rounding and clipping), "SQNR so far" compares the quantized network with the float one at
this point (everything before it included).
"""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..codegen import write_atomic
from ..quant.runtime import ActPoint, Mode
from .sources import CliError

__all__ = ["LayerStat", "build_report", "layer_stats", "sqnr_db"]

_HIST_SAMPLES = 200_000


@dataclass
class LayerStat:
    key: str
    op: str
    scope: str
    bitwidth: int
    fix_pos: int | None
    lo: float
    hi: float
    clipped: float  # fraction of float values outside the quantized range
    sqnr_here: float
    sqnr_so_far: float
    sample: torch.Tensor  # float values (a subsample) for the histogram


def sqnr_db(ref: torch.Tensor, test: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio of `test` against `ref`, in dB (inf when equal)."""
    noise = float((ref.double() - test.double()).pow(2).sum())
    signal = float(ref.double().pow(2).sum())
    if noise == 0:
        return math.inf
    return -math.inf if signal == 0 else 10 * math.log10(signal / noise)


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, list | tuple):
        return next((v for v in value if isinstance(v, torch.Tensor)), None)
    return None


def layer_stats(quantizer: Any, x: torch.Tensor) -> list[LayerStat]:
    """Run `x` through the test-mode module in float and quantized; one LayerStat per activation point."""
    model, state = quantizer.quant_model, quantizer.state
    seen: dict[str, dict[str, torch.Tensor]] = {}
    hooked = []
    for sub in model.modules():
        point = getattr(sub, "nndct_out", None)
        if isinstance(point, ActPoint):

            def record(value: Any, point: ActPoint = point) -> Any:
                out = point(value)
                t = _first_tensor(out)
                if t is not None and t.is_floating_point():
                    seen.setdefault(point.key, {})[state.mode.name] = t.detach().float().cpu()
                return out

            hooked.append((sub, point))
            sub.nndct_out = record
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    old = state.mode
    try:
        with torch.no_grad():
            for mode in (Mode.FLOAT, Mode.TEST):
                state.mode = mode
                model(x.to(device))
    finally:
        state.mode = old
        for sub, point in hooked:
            sub.nndct_out = point
    nodes = {n.name: n for n in quantizer.graph.nodes}
    stats = []
    g = torch.Generator().manual_seed(0)
    for key, spec in quantizer.table.outputs.items():
        values = seen.get(key, {})
        if "FLOAT" not in values or "TEST" not in values or values["FLOAT"].numel() == 0:
            continue
        f, q = values["FLOAT"], values["TEST"]
        fp = spec.fix_pos
        point = quantizer.points[key]
        alone = point.spec.with_fix_pos(fp) if fp is not None else None
        if alone is not None:
            from ..quant.primitives import fake_quantize

            here = sqnr_db(f, fake_quantize(f, alone))
            step = 2.0**-fp
            clipped = float(((f < alone.qmin * step) | (f > alone.qmax * step)).float().mean())
        else:
            here, clipped = math.inf, 0.0
        flat = f.reshape(-1)
        if flat.numel() > _HIST_SAMPLES:
            flat = flat[torch.randperm(flat.numel(), generator=g)[:_HIST_SAMPLES]]
        node = nodes.get(key)
        stats.append(
            LayerStat(
                key,
                node.op.value if node else "?",
                node.scope if node else "",
                spec.bitwidth,
                fp,
                float(f.min()),
                float(f.max()),
                clipped,
                here,
                sqnr_db(f, q),
                flat,
            )
        )
    return stats


def weight_sensitivity(quantizer: Any, x: torch.Tensor) -> list[list[str]]:
    """Per conv/linear weight: its bit width, its own SQNR, and the network output's SQNR when only this
    weight is quantized (everything else float): which layers could take fewer bits, which need more."""
    from ..quant.primitives import fake_quantize
    from ..quant.runtime import ParamQuant

    model, state = quantizer.quant_model, quantizer.state
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x = x.to(device)
    acts = [p for p in quantizer.points.values() if isinstance(p, ActPoint)]
    params = [
        (p, quantizer.points[p.key]) for p in quantizer.plan.params if isinstance(quantizer.points[p.key], ParamQuant)
    ]
    saved_acts = {id(a): a.fix_pos for a in acts}
    saved_specs = {id(pq): dict(pq.specs) for _, pq in params}
    old = state.mode
    rows = []
    try:
        with torch.no_grad():
            state.mode = Mode.TEST
            for a in acts:
                a.fix_pos = None  # an activation point without a fix position passes values through
            for _, other in params:
                other.specs = {k: v.with_fix_pos(None) for k, v in saved_specs[id(other)].items()}
            # the reference: nothing quantized, the DPU's own ops (average-pool factor ...) as simulated
            ref = _first_tensor(model(x)).float()
            for point, pq in params:
                if point.role != "weight":
                    continue
                for _, other in params:
                    other.specs = {k: v.with_fix_pos(None) for k, v in saved_specs[id(other)].items()}
                pq.specs = dict(saved_specs[id(pq)])
                spec = pq.specs["weight"]
                if spec.fix_pos is None:
                    continue
                w = quantizer.graph.params[point.key].float()
                own = sqnr_db(w, fake_quantize(w, spec))
                out = sqnr_db(ref, _first_tensor(model(x)).float())
                rows.append([point.key, str(spec.bitwidth), str(spec.fix_pos), _fmt(own), _fmt(out)])
    finally:
        state.mode = old
        for a in acts:
            a.fix_pos = saved_acts[id(a)]
        for _, pq in params:
            pq.specs = dict(saved_specs[id(pq)])
            pq._cache.clear()
    return rows


_SENS_HEADER = ["weight", "bits", "fix pos", "weight SQNR (dB)", "output SQNR, only this weight quantized (dB)"]


def _fmt(v: float) -> str:
    return "inf" if v == math.inf else "-inf" if v == -math.inf else f"{v:.1f}"


def _table_rows(stats: list[LayerStat]) -> list[list[str]]:
    return [
        [
            s.key,
            s.op,
            s.scope,
            str(s.bitwidth),
            str(s.fix_pos),
            f"{s.lo:.4g}",
            f"{s.hi:.4g}",
            f"{100 * s.clipped:.3f}",
            _fmt(s.sqnr_here),
            _fmt(s.sqnr_so_far),
        ]
        for s in stats
    ]


_HEADER = ["point", "op", "module", "bits", "fix pos", "min", "max", "clipped %", "SQNR here (dB)", "SQNR so far (dB)"]


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def _plots(stats: list[LayerStat]) -> dict[str, str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise CliError(
            "the report's plots need matplotlib", "pip install matplotlib (or 'pytorch-nndct[report]')"
        ) from exc
    plots = {}
    finite = [s for s in stats if math.isfinite(s.sqnr_so_far)]
    fig, ax = plt.subplots(figsize=(max(6, 0.22 * len(stats)), 3.2))
    xs = range(len(stats))
    cap = max([s.sqnr_here for s in stats if math.isfinite(s.sqnr_here)] + [s.sqnr_so_far for s in finite] + [1.0])
    ax.bar(xs, [min(s.sqnr_here, cap) for s in stats], color="#4c78a8", label="this point alone")
    ax.plot(xs, [min(s.sqnr_so_far, cap) for s in stats], color="#e45756", marker=".", label="network so far")
    ax.set_xticks(list(xs), [s.key for s in stats], rotation=90, fontsize=6)
    ax.set_ylabel("SQNR (dB)")
    ax.legend(fontsize=7)
    ax.set_title("Per-layer SQNR vs float")
    plots["sqnr"] = _png(fig)
    plt.close(fig)
    chosen = _chosen(stats)
    fig, axes = plt.subplots(1, len(chosen), figsize=(3.6 * len(chosen), 2.8), squeeze=False)
    for ax, s in zip(axes[0], chosen, strict=True):
        values = s.sample.numpy()
        ax.hist(values, bins=120, color="#72b7b2", log=True)
        if s.fix_pos is not None:
            step = 2.0**-s.fix_pos
            lo, hi = -(2 ** (s.bitwidth - 1)) * step, (2 ** (s.bitwidth - 1) - 1) * step
            left, right = ax.get_xlim()
            levels = [k * step for k in range(math.ceil(left / step), math.floor(right / step) + 1)]
            if len(levels) <= 80:
                for v in levels:
                    ax.axvline(v, color="#999999", lw=0.4, alpha=0.6)
            for v in (lo, hi):
                if left <= v <= right:
                    ax.axvline(v, color="#e45756", lw=1.2)
            ax.set_title(f"{s.key}: fp {s.fix_pos}, step {step:g}", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle("Float values with the quantization grid (grey) and its limits (red)", fontsize=9)
    plots["hist"] = _png(fig)
    plt.close(fig)
    return plots


def _chosen(stats: list[LayerStat]) -> list[LayerStat]:
    """First, last, lowest own SQNR, most clipped: the layers worth a look."""
    picks = [stats[0], min(stats, key=lambda s: s.sqnr_here), max(stats, key=lambda s: s.clipped), stats[-1]]
    out = []
    for s in picks:
        if s not in out:
            out.append(s)
    return out


def _text_table(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(
        ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]
    )


def _html_table(header: list[str] | None, rows: list[list[str]], cls: str = "") -> str:
    if header is None:
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
        return f'<table class="{cls}"><tbody>{body}</tbody></table>'
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def build_report(quantizer: Any, model: torch.nn.Module, x: torch.Tensor, out_dir: Path) -> list[Path]:
    """Write report.html and report.txt into `out_dir`; returns their paths."""
    stats = layer_stats(quantizer, x)
    if not stats:
        raise CliError("no quantized activation was reached by the report's samples", "check the data")
    with torch.no_grad():
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        ref = model.to(device)(x.to(device))
        got = quantizer.quant_model(x.to(device))
    ref, got = _first_tensor(ref), _first_tensor(got)
    total = sqnr_db(ref.float().cpu(), got.float().cpu()) if ref is not None and got is not None else math.nan
    rows = _table_rows(stats)
    sensitivity = weight_sensitivity(quantizer, x)
    float_rows = [[k, v] for k, v in quantizer.plan.float_ops.items()]
    partition = quantizer.partition_report()
    name = quantizer.graph.name
    summary = [
        ["model", name],
        ["samples", str(len(x))],
        ["output SQNR vs float", f"{_fmt(total)} dB"],
        ["quantized points", f"{len(quantizer.table.params)} parameters, {len(quantizer.table.outputs)} outputs"],
        ["ops in float", str(len(float_rows))],
        ["bias corrected", str(quantizer.table.bias_corrected)],
    ]
    text = "\n\n".join([
        f"Quantization report: {name}",
        _text_table(["item", "value"], summary),
        "Per-layer statistics\n" + _text_table(_HEADER, rows),
        "Weight sensitivity\n" + _text_table(_SENS_HEADER, sensitivity),
        "Ops computed in float\n" + (_text_table(["op", "why"], float_rows) if float_rows else "none"),
        "Partition\n" + partition,
    ]) + "\n"  # fmt: skip
    plots = _plots(stats)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Quantization report: {html.escape(name)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 24px; color: #222; }}
table {{ border-collapse: collapse; margin: 8px 0 20px; font-size: 13px; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: left; }}
th {{ background: #f0f0f0; }}
img {{ max-width: 100%; border: 1px solid #eee; margin: 6px 0; }}
pre {{ background: #f7f7f7; padding: 10px; font-size: 12px; overflow-x: auto; }}
</style></head><body>
<h1>Quantization report: {html.escape(name)}</h1>
{_html_table(None, summary, "summary")}
<h2>Per-layer SQNR</h2>
<img id="sqnr-plot" alt="per-layer SQNR bar chart" src="data:image/png;base64,{plots["sqnr"]}">
<h2>Value histograms</h2>
<img id="hist-plot" alt="histograms with the quantization grid" src="data:image/png;base64,{plots["hist"]}">
<h2>Per-layer statistics</h2>
{_html_table(_HEADER, rows, "layers")}
<h2>Weight sensitivity</h2>
<p>Each weight quantized alone, everything else in float: the layers with the lowest output SQNR are the
ones to keep at more bits (or to finetune); those with a high one can take fewer
(<code>layer_quantize_config</code> in the config file).</p>
{_html_table(_SENS_HEADER, sensitivity, "sensitivity")}
<h2>Ops computed in float</h2>
{_html_table(["op", "why"], float_rows, "float-ops") if float_rows else "<p>none</p>"}
<h2>Partition</h2>
<pre>{html.escape(partition)}</pre>
</body></html>
"""
    paths = [out_dir / "report.html", out_dir / "report.txt"]
    write_atomic({paths[0]: page.encode(), paths[1]: text.encode()})
    return paths
