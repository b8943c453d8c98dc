"""Exporters: quant_info.json (more to come: .xmodel, ONNX QDQ, deploy-check data)."""

from .quant_info import QUANT_INFO, QuantInfoError, read_quant_info, write_quant_info

__all__ = ["QUANT_INFO", "QuantInfoError", "read_quant_info", "write_quant_info"]
