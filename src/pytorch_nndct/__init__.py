"""pytorch_nndct: a post-training quantizer for PyTorch, API-compatible with vai_q_pytorch.

The foundation exposed here: `trace` a module into our graph IR, `optimize` it (fold batch-norm, drop
dropout and identities, remove dead code), and `write_module` / `load_module` to regenerate it as
readable PyTorch source.
"""

from .codegen import load_module, write_module
from .errors import CaptureError, CodegenError, InputError, NndctError, OutputDirError
from .ir import Graph, Op, dump, trace, verify
from .passes import optimize, run_passes

__version__ = "0.1.0"

__all__ = [
    "CaptureError",
    "CodegenError",
    "Graph",
    "InputError",
    "NndctError",
    "Op",
    "OutputDirError",
    "__version__",
    "dump",
    "load_module",
    "optimize",
    "run_passes",
    "trace",
    "verify",
    "write_module",
]
