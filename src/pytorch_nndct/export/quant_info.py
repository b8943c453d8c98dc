"""quant_info.json: fix positions of a calibrated model (SPEC 3.1), written atomically, read with checks.

Beyond the original's sections (`param`, `output`, `input`: `[[bit_width, fix_pos]]` per integer tensor,
`fix_pos` null for float steps and per-channel grids), two optional ones:
- `float_scale`: `{"<Model>::<output>": [[step, zero_point]]}` for each activation or input with a float step
  (CPU/GPU targets). JSON floats round-trip exactly, so test mode uses the very step calibration kept. The
  steps of parameters are not stored: they are a function of the (bias-corrected, fast-finetuned) tensor.
- `dtype` (written, as by the original, when any tensor has a float data type): `{"param": {...}, "output":
  {...}, "input": {}}` with `["int"]`, `["bfloat16"]`, `["float16"]` or `["float32"]` per tensor; tensors of a
  float data type appear only there.
- `mixed_precision` (written when mixed precision widened any point): `["<Model>::<output>", ...]`, the
  activation points kept at 16 bits by sensitivity; their entries are ordinary `[[16, fix_pos]]`, and test mode
  takes their width from the file.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import torch

from ..codegen import prepare_output_dir, write_atomic
from ..errors import NndctError
from ..quant.spec import DataType, QuantSpec
from ..quant.table import QuantTable

__all__ = [
    "BIAS_CORR",
    "PARAM_FILE",
    "QUANT_INFO",
    "QuantInfoError",
    "check_table",
    "read_bias_corr",
    "read_ft_params",
    "read_quant_info",
    "write_ft_params",
    "write_quant_info",
]

QUANT_INFO = "quant_info.json"
PARAM_FILE = "param.pth"  # fast-finetuned parameters by state-dict name (when quant_info says fast_finetuned)
BIAS_CORR = "bias_corr.pth"  # per-channel bias corrections by bias key (when quant_info says bias_corrected)
_ALSO_ACCEPTED = "Quant_info.json"  # the name the original tool wrote


class QuantInfoError(NndctError):
    """quant_info.json is missing, corrupted, or belongs to another model."""


def _version() -> str:
    from .. import __version__

    return f"{__version__}+torch{torch.__version__}"


def write_quant_info(
    table: QuantTable, output_dir: str | os.PathLike, bias_corr: dict[str, torch.Tensor] | None = None
) -> Path:
    """Write `<output_dir>/quant_info.json` for `table` (and bias_corr.pth with it); returns its path."""
    m = table.model
    doc: dict[str, Any] = {
        "param": {f"{m}::{k}": [[s.bitwidth, s.fix_pos]] for k, s in table.params.items() if s.is_int},
        "output": {f"{m}::{k}": [[s.bitwidth, s.fix_pos]] for k, s in table.outputs.items() if s.is_int},
        "input": {},
    }
    scales = {f"{m}::{k}": [[s.scale, s.zero_point]] for k, s in table.outputs.items() if s.scale is not None}
    if scales:
        doc["float_scale"] = scales
    if not all(s.is_int for s in (*table.params.values(), *table.outputs.values())):
        doc["dtype"] = {
            section: {f"{m}::{k}": [s.dtype.value] for k, s in specs.items()}
            for section, specs in (("param", table.params), ("output", table.outputs))
        }
        doc["dtype"]["input"] = {}
    if table.mixed_precision:
        doc["mixed_precision"] = [f"{m}::{k}" for k in table.mixed_precision]
    if table.equalized is not None:
        doc["equalized_pairs"] = [list(pair) for pair in table.equalized]
    doc.update(fast_finetuned=table.fast_finetuned, bias_corrected=table.bias_corrected, version=_version(),
               graph_md5=table.graph_md5)  # fmt: skip
    folder = prepare_output_dir(output_dir)
    path = folder / QUANT_INFO
    files = {path: (json.dumps(doc, indent=2) + "\n").encode()}
    if bias_corr:
        files[folder / BIAS_CORR] = _tensor_bytes(bias_corr)
    write_atomic(files)
    return path


def _tensor_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in tensors.items()}, buffer)
    return buffer.getvalue()


def _read_tensors(path: Path, expected: set[str], missing: str, foreign: str, fix: str) -> dict[str, torch.Tensor]:
    """A dict of tensors saved by `_tensor_bytes`, whose keys must all be in `expected`; `missing` and
    `foreign` say what an absent file and unknown keys mean."""
    if not path.is_file():
        raise QuantInfoError(f"{missing} {fix}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        why = f"{path} cannot be read as a tensor file ({type(exc).__name__}); it is corrupted."
        raise QuantInfoError(f"{why} {fix}") from exc
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise QuantInfoError(f"{path} does not hold a dict of tensors. {fix}")
    extra = sorted(set(data) - expected)
    if extra:
        raise QuantInfoError(f"{path} {foreign}: {_few(extra)}. {fix}")
    return data


def read_bias_corr(output_dir: str | os.PathLike, expected: set[str]) -> dict[str, torch.Tensor]:
    """Read bias_corr.pth; its keys must be bias keys of this model (`expected`)."""
    path = Path(output_dir) / BIAS_CORR
    return _read_tensors(
        path,
        expected,
        f"quant_info.json says the model is bias-corrected, but {path} does not exist.",
        "corrects biases this model does not have",
        "Fix: recalibrate (quant_mode='calib') to rewrite quant_info.json and bias_corr.pth together.",
    )


def _entries(doc: dict, section: str, model: str, path: Path) -> dict[str, tuple[int, int | None]]:
    raw = doc.get(section, {})
    if not isinstance(raw, dict):
        raise QuantInfoError(f"{path}: section {section!r} is not an object. Fix: recalibrate (quant_mode='calib').")
    out = {}
    for key, value in raw.items():
        try:
            (bw, fp) = value[0]
            if not isinstance(bw, int) or not (fp is None or isinstance(fp, int)):
                raise TypeError
        except (TypeError, ValueError, IndexError):
            raise QuantInfoError(
                f"{path}: entry {key!r} is {value!r}, not [[bit_width, fix_pos]]. Fix: recalibrate "
                "(quant_mode='calib') to rewrite the file."
            ) from None
        out[key.split("::", 1)[1] if "::" in key else key] = (bw, fp)
    return out


def read_equalized(output_dir: str | os.PathLike) -> list[tuple[str, str]] | None:
    """The conv pairs calibration equalized ("equalized_pairs"), read before the graph is built; None where the
    file, or the key, is absent or malformed (files written before it: every pair; read_quant_info reports
    a missing or broken file)."""
    folder = Path(output_dir)
    path = next((p for p in (folder / QUANT_INFO, folder / _ALSO_ACCEPTED) if p.is_file()), None)
    try:
        raw = json.loads(path.read_text()).get("equalized_pairs") if path is not None else None
        return None if raw is None else [(str(a), str(b)) for a, b in raw]
    except (ValueError, UnicodeDecodeError, AttributeError, TypeError):
        return None


def read_quant_info(output_dir: str | os.PathLike, model: str) -> tuple[QuantTable, dict[str, Any]]:
    """Read quant_info.json (or Quant_info.json) from `output_dir`; returns the table and the raw document.

    Specs in the table carry only bit width and fix position; callers merge them into their plan.
    """
    folder = Path(output_dir)
    path = folder / QUANT_INFO
    if not path.exists() and (folder / _ALSO_ACCEPTED).exists():
        path = folder / _ALSO_ACCEPTED
    if not path.exists():
        raise QuantInfoError(
            f"{folder / QUANT_INFO} does not exist. Fix: run calibration first (quant_mode='calib', a few "
            "forward passes, then export_quant_config()) with the same output_dir."
        )
    try:
        doc = json.loads(path.read_text())
        if not isinstance(doc, dict):
            raise ValueError("the top level is not an object")
    except (ValueError, UnicodeDecodeError) as exc:
        raise QuantInfoError(
            f"{path} is not valid JSON ({exc}); the file is corrupted. Fix: recalibrate (quant_mode='calib')."
        ) from exc
    table = QuantTable(model=model, graph_md5=str(doc.get("graph_md5", "")))
    table.fast_finetuned = bool(doc.get("fast_finetuned", False))
    table.bias_corrected = bool(doc.get("bias_corrected", False))
    for key, (bw, fp) in _entries(doc, "param", model, path).items():
        table.params[key] = QuantSpec(bw, True, fix_pos=fp)
    for key, (bw, fp) in _entries(doc, "output", model, path).items():
        table.outputs[key] = QuantSpec(bw, True, fix_pos=fp)
    for section, specs in (("param", table.params), ("output", table.outputs)):
        for key, dtype in _dtypes(doc, section, path).items():
            if dtype is not DataType.INT:
                specs[key] = QuantSpec(dtype=dtype)
    table.mixed_precision = _mixed_precision(doc, table, path)
    table.equalized = read_equalized(folder)
    for key, (scale, zero_point) in _float_scales(doc, path).items():
        if key not in table.outputs:
            raise QuantInfoError(f"{path}: float_scale names {key!r}, which has no output entry. {_RECALIBRATE}")
        table.outputs[key] = table.outputs[key].with_scale(scale, zero_point)
    return table, doc


_RECALIBRATE = "Fix: recalibrate (quant_mode='calib') to rewrite the file."


def _section(doc: dict, name: str, path: Path) -> dict:
    raw = doc.get(name, {})
    if not isinstance(raw, dict):
        raise QuantInfoError(f"{path}: section {name!r} is not an object. {_RECALIBRATE}")
    return raw


def _dtypes(doc: dict, section: str, path: Path) -> dict[str, DataType]:
    out = {}
    for key, value in _section(_section(doc, "dtype", path), section, path).items():
        names = {d.value: d for d in DataType}
        if not (isinstance(value, list) and len(value) == 1 and value[0] in names):
            raise QuantInfoError(f"{path}: dtype entry {key!r} is {value!r}, not one of {list(names)}. {_RECALIBRATE}")
        out[key.split("::", 1)[1] if "::" in key else key] = names[value[0]]
    return out


def _mixed_precision(doc: dict, table: QuantTable, path: Path) -> list[str]:
    raw = doc.get("mixed_precision", [])
    if not isinstance(raw, list) or not all(isinstance(k, str) for k in raw):
        raise QuantInfoError(f"{path}: mixed_precision is {raw!r}, not a list of output names. {_RECALIBRATE}")
    keys = [k.split("::", 1)[1] if "::" in k else k for k in raw]
    unknown = [k for k in keys if k not in table.outputs]
    if unknown:
        raise QuantInfoError(f"{path}: mixed_precision names {_few(unknown)}, which have no output entry. "
                             f"{_RECALIBRATE}")  # fmt: skip
    return keys


def _float_scales(doc: dict, path: Path) -> dict[str, tuple[float, int]]:
    out = {}
    for key, value in _section(doc, "float_scale", path).items():
        try:
            (scale, zero_point) = value[0]
            if isinstance(scale, bool) or not isinstance(scale, int | float) or not scale > 0:
                raise TypeError
            if isinstance(zero_point, bool) or not isinstance(zero_point, int):
                raise TypeError
        except (TypeError, ValueError, IndexError):
            raise QuantInfoError(
                f"{path}: float_scale entry {key!r} is {value!r}, not [[step, zero_point]]. {_RECALIBRATE}"
            ) from None
        out[key.split("::", 1)[1] if "::" in key else key] = (float(scale), zero_point)
    return out


def check_table(loaded: QuantTable, expected: QuantTable, doc: dict[str, Any], path: str) -> None:
    """Raise QuantInfoError naming the differences if `loaded` does not belong to the expected model."""
    problems = []
    for section, got, want in (
        ("param", set(loaded.params), set(expected.params)),
        ("output", set(loaded.outputs), set(expected.outputs)),
    ):
        missing, extra = sorted(want - got), sorted(got - want)
        if missing:
            problems.append(f"{len(missing)} {section} key(s) of this model are missing: {_few(missing)}")
        if extra:
            problems.append(f"{len(extra)} {section} key(s) are not in this model: {_few(extra)}")
    if not problems:
        widened = set(loaded.mixed_precision)  # outputs whose width the file sets (mixed precision)
        pairs = [(k, got[k], want[k]) for got, want in ((loaded.params, expected.params),
                                                         (loaded.outputs, expected.outputs)) for k in want]  # fmt: skip
        for what, differs, skip in (
            ("data types", lambda g, w: g.dtype is not w.dtype, ()),
            ("bit widths", lambda g, w: w.is_int and g.bitwidth != w.bitwidth, widened),
            ("scale types", lambda g, w: w.is_int and ((g.fix_pos is not None and (w.float_scale or w.per_channel))
                                                       or (g.scale is not None and not w.float_scale)), ()),
        ):  # fmt: skip
            bad = [_describe(k, g, w) for k, g, w in pairs if k not in skip and differs(g, w)]
            if bad:
                raise QuantInfoError(
                    f"{path} was calibrated with other {what}: {_few(bad, 3)}. Fix: create the test-mode quantizer "
                    "with the same bitwidth and quant_config_file as calibration, or recalibrate."
                )
    models = {k.split("::", 1)[0] for s in ("param", "output") for k in doc.get(s, {}) if "::" in k}
    if models and models != {expected.model}:
        problems.append(f"it was written for model {', '.join(sorted(models))}, not {expected.model}")
    if loaded.graph_md5 and expected.graph_md5 and loaded.graph_md5 != expected.graph_md5 and not problems:
        problems.append("the graph's structure (md5) differs although the names match")
    if problems:
        raise QuantInfoError(
            f"{path} does not match this model: " + "; ".join(problems) + ". This happens when the model, its "
            "input shapes or the torch version changed between calibration and test. Fix: recalibrate with "
            "quant_mode='calib' on the same model and inputs you test with."
        )


def _describe(key: str, got: QuantSpec, want: QuantSpec) -> str:
    def fmt(s: QuantSpec) -> str:
        if not s.is_int:
            return s.dtype.value
        return f"{s.bitwidth} bit" + (", float step" if s.scale is not None or s.float_scale else "")

    return f"{key} ({fmt(got)}, this quantizer: {fmt(want)})"


def _few(keys: list[str], n: int = 5) -> str:
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def write_ft_params(params: dict[str, torch.Tensor], output_dir: str | os.PathLike) -> Path:
    """Write the fast-finetuned parameters to `<output_dir>/param.pth`; returns its path."""
    path = prepare_output_dir(output_dir) / PARAM_FILE
    write_atomic({path: _tensor_bytes(params)})
    return path


def read_ft_params(output_dir: str | os.PathLike, expected: set[str]) -> dict[str, torch.Tensor]:
    """Read param.pth; its keys must be parameters of this model (`expected`)."""
    path = Path(output_dir) / PARAM_FILE
    return _read_tensors(
        path,
        expected,
        f"{path} does not exist: there are no fast-finetuned parameters to load.",
        "holds parameters this model does not have",
        "Fix: run fast_finetune() in calib mode with the same output_dir (and export_quant_config()).",
    )
