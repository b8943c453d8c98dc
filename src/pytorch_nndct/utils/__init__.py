"""Utilities of the original's `pytorch_nndct.utils` that scripts import: `register_custom_op`."""

from ..ir.custom import register_custom_op

__all__ = ["register_custom_op"]
