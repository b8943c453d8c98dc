"""Errors the tool raises on bad input. Each says what failed, where, and what to do about it."""

from __future__ import annotations

__all__ = ["CaptureError", "CodegenError", "InputError", "NndctError", "OutputDirError"]


class NndctError(Exception):
    """Base class of every error this package raises on purpose."""


class InputError(NndctError, TypeError):
    """An argument has the wrong type, structure or shape."""


class CaptureError(NndctError):
    """The model could not be captured into a graph."""


class CodegenError(NndctError):
    """The quantized module could not be generated, written or loaded."""


class OutputDirError(NndctError, OSError):
    """The output directory cannot be created or written."""
