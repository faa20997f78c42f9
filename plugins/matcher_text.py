"""The ``matcher-text`` text encoder: the text tower of a trained matcher, as a plugin of its own.

A prompt goes through the matcher's text encoder and then its projection head, and comes out as a
unit vector in the matcher's joint space. A generator conditioned on it reads the prompt with what
the matcher learned from the data (which side, which shape), not only with what a generic sentence
encoder knows.

The matcher (``matcher``: an MLflow model URI or a saved matcher folder, the champion by default) is
loaded on first use. Its text head and its text encoder's fitted state are this encoder's state, so a
model saved with it keeps its own copy: it reads prompts the same way after the champion changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from itm_core import hookimpl
from itm_core.components import Encoder
from itm_core.errors import ModelError
from plugins import check_setups

if TYPE_CHECKING:
    import torch

DEFAULT_MATCHER = "models:/itm-matcher@champion"


class MatcherText(Encoder):
    """Texts embedded by a trained matcher's text tower (its encoder, then its projection head)."""

    modality = "text"

    def __init__(self, matcher: str = DEFAULT_MATCHER) -> None:
        if not isinstance(matcher, str) or not matcher.strip():
            raise ValueError(f"matcher-text: matcher must be a model URI or a saved matcher folder; got {matcher!r}")
        self.matcher_uri = matcher
        self._matcher: Any = None

    @property
    def matcher(self) -> Any:
        if self._matcher is None:
            from itm_core.ops.tracking import load_matcher

            try:
                self._matcher = load_matcher(self.matcher_uri)
            except ModelError as exc:
                raise ModelError(
                    f"matcher-text: cannot load the matcher {self.matcher_uri!r} ({exc}); train one first "
                    "(`itm run retrain`) or set the option matcher to a model URI or a saved matcher folder"
                ) from None
        return self._matcher

    @property
    def dim(self) -> int:  # type: ignore[override]
        return int(self.matcher.config["embed_dim"])

    def encode(self, items: Sequence[str]) -> torch.Tensor:
        import torch

        if len(items) == 0:
            return torch.zeros(0, self.dim)
        return self.matcher.embed_texts(list(items)).float()

    def get_state(self) -> Any:
        m = self.matcher
        text = m.encoder("text") if m.has_encoder("text") else None
        return {
            "config": m.config,
            "text_head": {k: v.detach().cpu().clone() for k, v in m.text_head.state_dict().items()},
            "text_encoder_state": text.get_state() if text is not None and hasattr(text, "get_state") else None,
        }

    def set_state(self, state: Any) -> None:
        """Rebuild the text tower from a saved state, without loading ``matcher`` again."""
        if state is None:
            return
        from itm_core.contract.registry import create_encoder
        from itm_core.models.matcher import Matcher

        matcher = Matcher(**state["config"])
        matcher.text_head.load_state_dict(state["text_head"])
        matcher.encoders = {"text": create_encoder(state["config"]["text_encoder"], state.get("text_encoder_state"))}
        self._matcher = matcher.eval()


@hookimpl
def register_encoders(register):
    register(
        "matcher-text",
        MatcherText,
        modality="text",
        dim="the matcher's embed_dim",
        trainable=False,
        description="The text tower of a trained matcher (its text encoder and projection head): prompts in its joint "
        "space",
        check_options=check_setups.with_matcher(),
    )
