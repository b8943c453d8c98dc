"""pytorch_nndct: a post-training quantizer for PyTorch, API-compatible with vai_q_pytorch.

The original's API is re-exported here as in its package (`from pytorch_nndct import torch_quantizer`).
The foundation under it: `trace` a module into our graph IR, `optimize` it (fold batch-norm, drop
dropout and identities, remove dead code), and `write_module` / `load_module` to regenerate it as
readable PyTorch source.
"""

from . import _logging, utils
from .apis import Inspector, QatProcessor, dump_xmodel, load_vai_ops, torch_quantizer
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
    "Inspector",
    "NndctError",
    "Op",
    "OutputDirError",
    "QatProcessor",
    "__version__",
    "dump",
    "dump_xmodel",
    "load_module",
    "load_vai_ops",
    "optimize",
    "run_passes",
    "torch_quantizer",
    "trace",
    "utils",
    "verify",
    "write_module",
]

_logging.install()
