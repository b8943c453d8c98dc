"""Graph IR: the op vocabulary, nodes and graphs, invariants, text dumps and the torch front end."""

from .graph import Graph, InputSpec, Node, Ref, TensorMeta
from .ops import OPS, Op, OpDef, OutputRule
from .text import dump
from .trace import trace
from .verify import GraphInvariantError, verify

__all__ = [
    "OPS",
    "Graph",
    "GraphInvariantError",
    "InputSpec",
    "Node",
    "Op",
    "OpDef",
    "OutputRule",
    "Ref",
    "TensorMeta",
    "dump",
    "trace",
    "verify",
]
