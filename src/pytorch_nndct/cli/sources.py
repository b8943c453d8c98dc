"""Where the command line gets its model and data from. Every failure is a CliError with a hint."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["BUILTIN", "CliError", "Data", "load_data", "load_model"]

BUILTIN = "digits"  # the built-in demo model and data
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class CliError(Exception):
    """A user error: printed as one line (`error: ...; hint: ...`), exit code 2."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


def load_model(spec: str, weights: str | None = None) -> torch.nn.Module:
    """`digits` (built in), `torchvision:NAME`, or `path/to/file.py:factory`; then optional weights."""
    if spec == BUILTIN:
        from ..models.digits import DigitsNet, pretrained

        model = pretrained() if weights is None else DigitsNet()
    elif spec.startswith("torchvision:"):
        model = _torchvision(spec.split(":", 1)[1])
    elif ":" in spec and spec.rsplit(":", 1)[0].endswith(".py"):
        model = _from_file(*spec.rsplit(":", 1))
    else:
        raise CliError(
            f"unknown model {spec!r}",
            "use 'digits' (built in), 'torchvision:resnet18', or 'path/to/model.py:factory_function'",
        )
    if weights is not None:
        _load_weights(model, weights)
    return model.eval()


def _torchvision(name: str) -> torch.nn.Module:
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)
    if name not in known:
        close = [k for k in known if name.lower()[:5] in k][:5]
        raise CliError(
            f"torchvision has no classification model {name!r}",
            f"did you mean {', '.join(close)}?" if close else "see torchvision.models.list_models()",
        )
    return torchvision.models.get_model(name)


def _from_file(path: str, factory: str) -> torch.nn.Module:
    file = Path(path)
    if not file.is_file():
        raise CliError(f"model file {path!r} does not exist", "give the path of a .py file and a factory function")
    spec = importlib.util.spec_from_file_location(f"_vai_q_user_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(file.parent.resolve()))
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise CliError(
            f"importing {path} failed: {type(exc).__name__}: {exc}", "run the file with python to see why"
        ) from exc
    finally:
        sys.path.pop(0)
    fn = getattr(module, factory, None)
    if not callable(fn):
        raise CliError(f"{path} has no function or class {factory!r}", "name a callable that returns the nn.Module")
    model = fn()
    if not isinstance(model, torch.nn.Module):
        raise CliError(f"{path}:{factory}() returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def _torch_load(path: Path, message: str, hint: str) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CliError(f"{message} ({type(exc).__name__})", hint) from exc


def _load_weights(model: torch.nn.Module, weights: str) -> None:
    path = Path(weights)
    if not path.is_file():
        raise CliError(
            f"weights file {weights!r} does not exist", "give the .pth saved with torch.save(model.state_dict())"
        )
    state = _torch_load(path, f"cannot read {weights}", "save it with torch.save(model.state_dict(), path)")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError) as exc:
        first = str(exc).strip().splitlines()
        raise CliError(
            f"{weights} does not fit the model: {first[1].strip() if len(first) > 1 else first[0]}",
            "pass the weights saved from this model class",
        ) from exc


@dataclass
class Data:
    """Calibration and evaluation samples: `x` is [N, ...] (one model input), `y` labels or None."""

    name: str
    calib_x: torch.Tensor
    eval_x: torch.Tensor
    eval_y: torch.Tensor | None

    def batches(self, x: torch.Tensor, batch_size: int, limit: int | None = None) -> Iterator[torch.Tensor]:
        count = 0
        for start in range(0, len(x), batch_size):
            if limit is not None and count >= limit:
                return
            count += 1
            yield x[start : start + batch_size]


def load_data(spec: str, input_size: int, max_images: int = 1000) -> Data:
    """`digits` (built in), an image folder (ImageFolder layout or flat), or a saved tensor file."""
    if spec == BUILTIN:
        try:
            from ..models.digits import load_digits

            x_train, _, x_test, y_test = load_digits()
        except ImportError as exc:
            raise CliError(str(exc).split(". Fix: ")[0], "pip install 'pytorch-nndct[demo]' (scikit-learn)") from exc
        return Data("digits", x_train, x_test, y_test)
    path = Path(spec)
    if not path.exists():
        raise CliError(f"data {spec!r} does not exist", "give an image folder, a .pt tensor file, or 'digits'")
    if path.is_dir():
        return _image_folder(path, input_size, max_images)
    return _tensor_file(path)


def _tensor_file(path: Path) -> Data:
    obj = _torch_load(path, f"cannot read {path} as a tensor file", "save it with torch.save")
    if isinstance(obj, dict):
        x, y = obj.get("x"), obj.get("y")
    elif isinstance(obj, list | tuple) and len(obj) == 2:
        x, y = obj
    else:
        x, y = obj, None
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2:
        raise CliError(
            f"{path} holds no float tensor of samples [N, ...]",
            "save a tensor, (x, y), or {'x': x, 'y': y} with x a float tensor and y integer labels",
        )
    if y is not None and (not isinstance(y, torch.Tensor) or y.shape[:1] != x.shape[:1]):
        raise CliError(f"{path}: labels y do not match the {len(x)} samples in x", "y must be a tensor of N labels")
    return Data(path.name, x, x, y)


def _image_folder(path: Path, input_size: int, max_images: int) -> Data:
    from PIL import Image
    from torchvision import transforms

    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES)
    if not files:
        raise CliError(
            f"{path} has no images ({', '.join(_IMAGE_SUFFIXES[:4])}, ...)",
            "point --data at a folder of images, e.g. an ImageFolder tree class/img.jpg",
        )
    classes = sorted({p.parent.name for p in files}) if all(p.parent != path for p in files) else None
    files = files[:max_images]
    tf = transforms.Compose([
        transforms.Resize(int(input_size * 256 / 224)),
        transforms.CenterCrop(input_size),
        transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ])  # fmt: skip
    images = []
    for p in files:
        try:
            with Image.open(p) as img:
                images.append(tf(img.convert("RGB")))
        except OSError as exc:
            raise CliError(f"cannot read image {p} ({exc})", "remove or replace the broken file") from exc
    x = torch.stack(images)
    y = torch.tensor([classes.index(p.parent.name) for p in files]) if classes else None
    return Data(path.name, x, x, y)
