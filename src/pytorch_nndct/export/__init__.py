"""Exporters: quant_info.json, and the serial_v2 schema the .xmodel writer (in progress) builds on."""

from .quant_info import QUANT_INFO, QuantInfoError, read_quant_info, write_quant_info

__all__ = ["QUANT_INFO", "QuantInfoError", "read_quant_info", "write_quant_info"]
