"""Legal, unique Python identifiers for generated code."""

from __future__ import annotations

import keyword
import re

__all__ = ["class_name"]


def class_name(name: str) -> str:
    """A legal class name close to `name` ('my-model' -> 'my_model'; '' -> 'Model')."""
    cleaned = re.sub(r"\W", "_", name)
    if not cleaned or cleaned[0].isdigit():
        cleaned = f"Model_{cleaned}" if cleaned else "Model"
    if keyword.iskeyword(cleaned):
        cleaned += "_"
    return cleaned
