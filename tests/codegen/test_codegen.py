"""Code generation: deterministic readable source, atomic writes, clear errors on load and write."""

from __future__ import annotations

import ast
import os

import pytest
import torch

import pytorch_nndct as nd
from helpers import assert_float_equivalent
from pytorch_nndct import codegen
from pytorch_nndct.codegen import generate_source
from small_models import golden_models


def _graph(name: str = "conv_bn_relu"):
    model, x = golden_models()[name]
    return nd.optimize(nd.trace(model, x)), model, x


def test_source_is_deterministic_and_plain_python(tmp_path):
    g1, _, _ = _graph()
    g2, _, _ = _graph()
    a = nd.write_module(g1, tmp_path / "a").read_bytes()
    b = nd.write_module(g2, tmp_path / "b").read_bytes()
    assert a == b
    tree = ast.parse(a)
    imports = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert imports == {"torch", "pytorch_nndct.nn"}
    classes = [n.name for n in tree.body if isinstance(n, ast.ClassDef)]
    assert classes == ["ConvBnRelu"]


def test_every_op_is_one_submodule_with_its_node_name(tmp_path):
    graph, _, _ = _graph()
    source = generate_source(graph, "x")
    for k, node in enumerate(graph.nodes):
        assert f"self.module_{k} = " in source
        assert f"# ConvBnRelu::{node.name}" in source


def test_loaded_module_runs_on_other_batch_sizes_and_in_train_loops(tmp_path):
    graph, model, x = _graph()
    loaded = nd.load_module(nd.write_module(graph, tmp_path))
    for batch in (1, 5):
        inp = torch.randn(batch, *x.shape[1:])
        with torch.no_grad():
            assert_float_equivalent(model(inp), loaded(inp), rtol=1e-4, atol=1e-5)
    loss = loaded(x).sum()
    loss.backward()  # the regenerated model trains like any nn.Module
    assert any(p.grad is not None for p in loaded.parameters())


def test_output_dir_that_is_a_file(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("x")
    with pytest.raises(nd.OutputDirError, match="is a file"):
        nd.write_module(_graph()[0], target)


def test_unwritable_output_dir(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    with pytest.raises(nd.OutputDirError, match=r"cannot write to output directory.*Fix:"):
        nd.write_module(_graph()[0], blocker / "sub")


def test_failed_write_leaves_nothing_half_written(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    calls = {"n": 0}
    real_replace = os.replace

    def failing_replace(src, dst):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(codegen.os, "replace", failing_replace)
    with pytest.raises(OSError):
        nd.write_module(_graph()[0], out)
    assert sorted(os.listdir(out)) == []


def test_codegen_failure_writes_nothing(tmp_path):
    graph, _, _ = _graph()
    graph.nodes[2].attrs["bogus"] = object()
    graph.nodes[2].op = nd.Op.HARDTANH
    graph.nodes[2].attrs.update(min_val=object(), max_val=1.0)
    with pytest.raises(TypeError, match="cannot write the value"):
        nd.write_module(graph, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(nd.CodegenError, match="does not exist"):
        nd.load_module(tmp_path / "Missing.py")
    path = nd.write_module(_graph()[0], tmp_path)
    torch.save({"module_1.weight": torch.zeros(1)}, path.with_suffix(".pth"))
    with pytest.raises(nd.CodegenError, match=r"do not fit ConvBnRelu.py.*regenerate"):
        nd.load_module(path)


def test_forward_frees_each_activation_after_its_last_use(tmp_path):
    """The generated forward keeps only live values (a flat forward would hold every intermediate until it
    returns: twice efficientnet_b0's peak memory at batch 32, and slower convolutions)."""
    import weakref

    class Chain(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.convs = torch.nn.ModuleList(torch.nn.Conv2d(4, 4, 3, padding=1) for _ in range(6))

        def forward(self, x):
            skip = x = self.convs[0](x)
            for conv in self.convs[1:]:
                x = torch.relu(conv(x))
            return x + skip

    model, x = Chain().eval(), torch.randn(2, 4, 8, 8)
    loaded = nd.load_module(nd.write_module(nd.optimize(nd.trace(model, x)), tmp_path))
    outputs: list[weakref.ref] = []
    alive_at_last_conv: list[int] = []

    def record(module, inputs, output):
        outputs.append(weakref.ref(output))

    def count(module, inputs):
        alive_at_last_conv.append(sum(r() is not None for r in outputs))

    subs = [m for m in loaded.modules() if m is not loaded and not list(m.children())]
    for m in subs:
        m.register_forward_hook(record)
    convs = [m for m in subs if isinstance(m, torch.nn.Conv2d)]
    convs[-1].register_forward_pre_hook(count)
    with torch.no_grad():
        out = loaded(x)
    torch.testing.assert_close(out, model(x))
    # at the last conv: the network input (the caller holds it), the skip value and the conv's own input
    # are alive, not the nine values between them
    assert len(outputs) == 13 and alive_at_last_conv == [3], (len(outputs), alive_at_last_conv)


def test_written_files_get_the_usual_permissions(tmp_path):
    import stat

    old = os.umask(0o022)
    try:
        codegen.write_atomic({tmp_path / "a.txt": b"x"})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644  # readable by others, as open() gives
