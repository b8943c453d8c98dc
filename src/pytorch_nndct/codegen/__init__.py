"""Write a graph as `<ModelClass>.py` plus its parameters, and load it back as an nn.Module."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

import torch

from ..errors import CodegenError, OutputDirError
from ..ir.graph import Graph
from .emit import EMITTERS, generate_source, module_state
from .names import class_name

__all__ = ["EMITTERS", "generate_source", "load_module", "prepare_output_dir", "write_atomic", "write_module"]


def prepare_output_dir(output_dir: str | os.PathLike) -> Path:
    """Create `output_dir` if needed and check that files can be written there."""
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise OutputDirError(
            f"output directory {str(path)!r} is a file. Fix: pass the path of a directory (it is created "
            "if missing), e.g. output_dir='quantize_result'."
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".nndct_probe_"):
            pass
    except OSError as exc:
        raise OutputDirError(
            f"cannot write to output directory {str(path)!r} ({exc.strerror or exc}). Fix: choose a directory "
            "you can write to, or change its permissions."
        ) from exc
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(files: dict[Path, bytes | Iterable[bytes]]) -> None:
    """Write several files so that either all of them are replaced or none is.

    A file's content is bytes, or an iterable of bytes-like pieces written as they come (a large export
    need not be joined in memory first).

    Each file goes to a temporary name first; existing files are moved aside and restored if any step
    fails, so an interrupted or failed write never leaves a half-written output directory.
    """
    temps: dict[Path, str] = {}
    backups: dict[Path, str] = {}
    done: list[Path] = []
    try:
        for path, data in files.items():
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            temps[path] = tmp
            with os.fdopen(fd, "wb") as f:
                for piece in [data] if isinstance(data, bytes | bytearray | memoryview) else data:
                    f.write(piece)
            os.chmod(tmp, 0o666 & ~_umask())  # as open() would create it (mkstemp makes it 0600)
        for path in files:
            if path.exists():
                backups[path] = tempfile.mktemp(dir=path.parent, prefix=f".{path.name}.", suffix=".bak")
                os.rename(path, backups[path])
            os.replace(temps[path], path)
            del temps[path]
            done.append(path)
    except BaseException:
        for path in done:
            path.unlink(missing_ok=True)
        for path, bak in backups.items():
            os.rename(bak, path)
        for tmp in temps.values():
            if os.path.exists(tmp):
                os.unlink(tmp)
        raise
    for bak in backups.values():
        os.unlink(bak)


def write_module(graph: Graph, output_dir: str | os.PathLike) -> Path:
    """Write `<ModelClass>.py` and `<ModelClass>.pth` into `output_dir`; returns the .py path."""
    from .. import __version__

    source = generate_source(graph, __version__)  # everything is built before anything is written
    buf = io.BytesIO()
    torch.save(module_state(graph), buf)
    out = prepare_output_dir(output_dir)
    cls = class_name(graph.name)
    py_path = out / f"{cls}.py"
    write_atomic({out / f"{cls}.pth": buf.getvalue(), py_path: source.encode()})
    return py_path


def load_module(path: str | os.PathLike) -> torch.nn.Module:
    """Import a generated `<ModelClass>.py`, build the module and load its parameters (eval mode)."""
    py_path = Path(path)
    if py_path.is_dir():
        candidates = sorted(p for p in py_path.glob("*.py") if p.with_suffix(".pth").exists())
        if len(candidates) != 1:
            raise CodegenError(
                f"{str(py_path)!r} holds {len(candidates)} generated modules; pass the path of the .py file."
            )
        py_path = candidates[0]
    pth_path = py_path.with_suffix(".pth")
    for p in (py_path, pth_path):
        if not p.is_file():
            raise CodegenError(f"{str(p)!r} does not exist. Fix: run write_module (or the quantizer) first.")
    digest = hashlib.md5(str(py_path.resolve()).encode()).hexdigest()[:8]
    mod_name = f"pytorch_nndct_generated.{py_path.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(mod_name, py_path)
    if spec is None or spec.loader is None:
        raise CodegenError(f"cannot import {str(py_path)!r} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
        model = getattr(module, py_path.stem)()
    except Exception as exc:
        sys.modules.pop(mod_name, None)
        raise CodegenError(f"importing the generated module {str(py_path)!r} failed: {exc}") from exc
    state = torch.load(pth_path, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CodegenError(
            f"the parameters in {str(pth_path)!r} do not fit {py_path.name}: {str(exc).splitlines()[0]}. Fix: "
            "regenerate both files together with write_module."
        ) from exc
    return model.eval()
