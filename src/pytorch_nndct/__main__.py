"""`python -m pytorch_nndct ...` is the `vai_q_pytorch` command line."""

import sys

from .cli import main

sys.exit(main())
