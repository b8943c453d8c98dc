"""Shared test helpers: named tolerance tiers, model preparation and golden files.

Tiers (DESIGN.md): bit-exact (`assert_bit_exact`), within N LSB (`assert_within_lsb`), float-equivalent
(`assert_float_equivalent`), and end-to-end SQNR (`sqnr_db`, `assert_sqnr`). Set NNDCT_REGEN_GOLDEN=1 to
rewrite the golden files under tests/golden for review instead of comparing against them.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

GOLDEN_DIR = Path(__file__).parent / "golden"
REGEN_GOLDEN = os.environ.get("NNDCT_REGEN_GOLDEN") == "1"

# Regenerated float models must match the original to this SQNR (issue 2, item 2).
REGEN_SQNR_DB = 80.0


def sqnr_db(reference: torch.Tensor, test: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio of `test` against `reference`, in dB (inf when equal)."""
    ref = reference.detach().double()
    noise = (ref - test.detach().double()).pow(2).sum().item()
    if noise == 0.0:
        return math.inf
    signal = ref.pow(2).sum().item()
    return 10.0 * math.log10(signal / noise) if signal > 0 else -math.inf


def flat_tensors(value) -> list[torch.Tensor]:
    leaves, _ = torch.utils._pytree.tree_flatten(value)
    return [v for v in leaves if isinstance(v, torch.Tensor)]


def assert_sqnr(reference, test, min_db: float = REGEN_SQNR_DB) -> None:
    refs, tests = flat_tensors(reference), flat_tensors(test)
    assert len(refs) == len(tests), f"{len(refs)} reference outputs but {len(tests)} test outputs"
    for k, (r, t) in enumerate(zip(refs, tests)):
        assert r.shape == t.shape, f"output {k}: shape {tuple(t.shape)} != {tuple(r.shape)}"
        db = sqnr_db(r, t)
        assert db > min_db, f"output {k}: SQNR {db:.1f} dB <= {min_db} dB"


def assert_bit_exact(a: torch.Tensor, b: torch.Tensor) -> None:
    assert torch.equal(a, b), f"not bit-exact: max |diff| = {(a - b).abs().max().item()}"


def assert_within_lsb(a: torch.Tensor, b: torch.Tensor, fix_pos: int, n: int = 1) -> None:
    lsb = 2.0**-fix_pos
    worst = (a - b).abs().max().item()
    assert worst <= n * lsb, f"max |diff| {worst} > {n} LSB ({n * lsb})"


def assert_float_equivalent(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    assert torch.allclose(a, b, rtol=rtol, atol=atol), f"max |diff| = {(a - b).abs().max().item()}"


def prepare_model(
    model: torch.nn.Module, input_size: tuple[int, ...], seed: int = 0, bn_stats: str = "blend"
) -> torch.nn.Module:
    """Random weights made realistic: zero-initialised weights get random values, and BN statistics are
    populated by train-mode forwards on random data. `bn_stats`: "blend" (two forwards of 4 with the
    layers' momentum, 0.1: the statistics stay close to their initial 0 / 1, so each BN barely rescales)
    or "exact" (cumulative averages over four forwards of 8: each BN normalises what reaches it, as in a
    trained network's forward). Returns the model in eval mode."""
    if bn_stats not in ("blend", "exact"):
        raise ValueError(f"bn_stats must be 'blend' or 'exact', not {bn_stats!r}")
    torch.manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2 and not p.any():
                p.normal_(0, 0.02)
        if bn_stats == "exact":
            for m in norms:
                m.momentum = None
                m.reset_running_stats()
        model.train()
        try:
            for _ in range(2 if bn_stats == "blend" else 4):
                model(torch.randn(4 if bn_stats == "blend" else 8, *input_size))
        finally:
            for m, momentum in zip(norms, momenta, strict=True):
                m.momentum = momentum
    return model.eval()


def golden(name: str, text: str) -> None:
    """Compare `text` with tests/golden/<name>, or rewrite the file when NNDCT_REGEN_GOLDEN=1."""
    path = GOLDEN_DIR / name
    if REGEN_GOLDEN:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return
    assert path.exists(), f"missing golden file {path}; run with NNDCT_REGEN_GOLDEN=1 and review it"
    expected = path.read_text()
    assert text == expected, f"{name} differs from the golden file; run with NNDCT_REGEN_GOLDEN=1 to review"


def calib_then_test(model, example, batches, out_dir, **kwargs):
    """Calibrate on `batches`, export quant_info.json, and return (calib, test) quantizers over `out_dir`."""
    from pytorch_nndct.apis import torch_quantizer

    calib = torch_quantizer("calib", model, (example,), output_dir=out_dir, **kwargs)
    with torch.no_grad():
        for b in batches:
            calib.quant_model(b)
    calib.export_quant_config()
    return calib, torch_quantizer("test", model, (example,), output_dir=out_dir, **kwargs)


def rss_bytes() -> int:
    """The process's resident memory now (VmRSS, Linux)."""
    return _status_kib("VmRSS") * 1024


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


class PeakRss:
    """`with PeakRss() as m: ...` then `m.extra`: the peak resident memory above the RSS at entry, in bytes.

    The kernel's high-water mark is reset at entry (writing 5 to /proc/self/clear_refs) and read at exit,
    so short peaks inside C calls that hold the GIL are counted; where the reset is not allowed, a thread
    samples VmRSS every millisecond instead. Not nestable (an inner block resets the mark).
    """

    def __enter__(self) -> PeakRss:
        import ctypes
        import gc

        gc.collect()
        try:  # free heap pages go back to the OS first, or the block's allocations could reuse them unseen
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
        self.base = rss_bytes()
        self.peak = self.base
        self._thread = None
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            import threading

            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, rss_bytes())
        else:
            self.peak = max(self.peak, _status_kib("VmHWM") * 1024)

    @property
    def extra(self) -> int:
        return self.peak - self.base
