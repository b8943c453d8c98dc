"""The deploy graph, executed op by op as the DPU computes it, equals the quantized simulation bit for bit."""

from __future__ import annotations

import pytest
import torch
from test_xmodel import CASES, NormBetweenConvs, _quantize, as_deployed, simulate_and_lower

from pytorch_nndct.errors import NndctError
from pytorch_nndct.export.deploy import lower
from pytorch_nndct.export.reference import run_deploy_graph


@pytest.mark.parametrize("case", sorted(CASES))
def test_deploy_graph_equals_simulation(case, tmp_path):
    x, simulated, deploy = simulate_and_lower(case, tmp_path)
    out = run_deploy_graph(deploy, [x])[deploy.ops[-1].name]
    simulated = as_deployed(simulated, out)
    assert torch.equal(out, simulated), f"max |diff| {(out - simulated).abs().max().item()}"


def test_custom_ops_cannot_run(tmp_path):
    model = NormBetweenConvs(lambda t: torch.cumsum(t, dim=1)).eval()  # layer norm and cumsum: no XIR built-in
    x = torch.randn(2, 3, 6, 6)
    quantizer = _quantize(model, x, [x], tmp_path)
    deploy = lower(quantizer.export_graph(), quantizer.plan, quantizer.table)
    with pytest.raises(NndctError, match="cannot execute 'nndct_layer_norm'"):
        run_deploy_graph(deploy, [x[:1]])
