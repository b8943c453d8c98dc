"""torchvision classifiers: trace -> optimize -> write_module -> load_module reproduces the float model.

Random weights, BN statistics populated by train-mode forwards on random data. The full list of 80 models
runs in benchmarks/model_zoo.py; this test covers the required subset.
"""

from __future__ import annotations

import pytest
import torch
import torchvision

import pytorch_nndct as nd
from helpers import REGEN_SQNR_DB, prepare_model, sqnr_db
from pytorch_nndct.ir.ops import CONV_OPS, Op

MODELS = [
    "resnet18",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "densenet121",
    "inception_v3",
    "googlenet",
    "shufflenet_v2_x1_0",
    "squeezenet1_1",
    "regnet_x_400mf",
    "convnext_tiny",
    "vit_b_16",
    "swin_t",
]


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_regenerated_model_matches_float(name, tmp_path):
    size = (3, 299, 299) if name == "inception_v3" else (3, 224, 224)
    model = prepare_model(torchvision.models.get_model(name), size)
    graph = nd.optimize(nd.trace(model, torch.randn(2, *size)))
    # structural: no batch-norm is left after a conv (none is left at all: the rest become channel scales)
    assert not [n for n in graph.nodes if n.op is Op.BATCH_NORM and n.inputs[0].op in CONV_OPS]
    assert not graph.find(Op.BATCH_NORM)
    loaded = nd.load_module(nd.write_module(graph, tmp_path))
    with torch.no_grad():
        for batch in (2, 3):
            x = torch.randn(batch, *size)
            ref, out = model(x), loaded(x)
            assert out.shape == ref.shape
            db = sqnr_db(ref, out)
            assert db > REGEN_SQNR_DB, f"{name} at batch {batch}: SQNR {db:.1f} dB"
