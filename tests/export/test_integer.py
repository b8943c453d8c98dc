"""The integer-only run of the deploy graph equals the fake-quant simulation bit for bit."""

from __future__ import annotations

import pytest
import torch
from test_xmodel import CASES, as_deployed, simulate_and_lower

from pytorch_nndct.export.integer import IntValue, _requantize, run_integer


@pytest.mark.parametrize("case", sorted(CASES))
def test_integer_run_equals_simulation(case, tmp_path):
    x, simulated, deploy = simulate_and_lower(case, tmp_path)
    values = run_integer(deploy, [x])
    out = values[deploy.ops[-1].name]
    assert isinstance(out, IntValue), "the network output should come out of a fix"
    assert torch.equal(out.q, torch.round(out.q)) and out.q.abs().max() <= 128
    result = out.to_float()
    simulated = as_deployed(simulated, result)
    assert torch.equal(result, simulated), f"max |diff| {(result - simulated).abs().max().item()}"
    convs = [op for op in deploy.ops if op.type in ("conv2d", "depthwise-conv2d", "matmul")]
    assert all(isinstance(values[op.name], IntValue) for op in convs)


def test_requantize_is_the_dpu_round_half_up_shift():
    acc = IntValue(torch.tensor([5.0, -5.0, 6.0, -6.0, 7.0, -7.0, 1000.0, -1000.0]), 2)  # 1.25, -1.25, 1.5 ...
    assert _requantize(acc, 8, 0).q.tolist() == [1.0, -1.0, 2.0, -1.0, 2.0, -2.0, 127.0, -128.0]
    assert _requantize(acc, 8, 4).q.tolist() == [20.0, -20.0, 24.0, -24.0, 28.0, -28.0, 127.0, -128.0]
