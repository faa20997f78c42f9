"""The scorer a leaderboard row or an explanation names (:class:`MatcherRef`): a registered matcher
loaded by model URI, or a pair of encoders compared directly or through untrained heads."""

from __future__ import annotations

import torch
from pydantic import Field, model_validator

from itm_core.contract.params import ComponentParams, Params, component
from itm_core.contract.registry import create
from itm_core.data import ImageTextSet
from itm_core.errors import ParamsError
from itm_core.judge.evaluation import EncoderPair, build_encoders
from itm_core.models.matcher import Matcher
from itm_core.ops.tracking import load_matcher


class MatcherRef(Params):
    """A matcher to evaluate: a model URI, or a pair of encoders (compared directly, or through untrained heads)."""

    model_uri: str | None = Field(
        None, description="e.g. models:/itm-matcher@champion, runs:/<id>/matcher, or a saved matcher folder"
    )
    image_encoder: ComponentParams | None = Field(None, json_schema_extra=component("encoder"))
    text_encoder: ComponentParams | None = Field(None, json_schema_extra=component("encoder"))
    untrained_heads: bool = Field(
        False, description="With an encoder pair: score through randomly initialised heads (a chance reference)"
    )
    similarity: str = Field(
        "cosine",
        description="Similarity for an encoder pair compared directly",
        json_schema_extra=component("similarity"),
    )
    label: str | None = Field(None, description="Name in the leaderboard")

    @model_validator(mode="after")
    def _one_source(self) -> MatcherRef:
        pair = self.image_encoder is not None and self.text_encoder is not None
        if bool(self.model_uri) == pair:
            raise ValueError("give either model_uri or both image_encoder and text_encoder")
        return self

    def display_name(self) -> str:
        if self.label:
            return self.label
        if self.model_uri:
            return self.model_uri
        image, text = self.encoders()
        suffix = " (untrained heads)" if self.untrained_heads else ""
        return f"{image.name} + {text.name}{suffix}"

    def encoders(self) -> tuple[ComponentParams, ComponentParams]:
        """The image and the text encoder of a reference to an encoder pair."""
        if self.image_encoder is None or self.text_encoder is None:
            raise ParamsError(f"{self.model_uri!r} is a model URI, not an encoder pair")
        return self.image_encoder, self.text_encoder


def build_scorer(ref: MatcherRef, train: ImageTextSet | None = None) -> Matcher | EncoderPair:
    """The scorer that ``ref`` names; encoders that need fitting are fitted on ``train``."""
    if ref.model_uri:
        return load_matcher(ref.model_uri)
    image_params, text_params = ref.encoders()
    image, text = build_encoders(image_params, text_params, train)
    if ref.untrained_heads:
        torch.manual_seed(0)
        matcher = Matcher(image_params.model_dump(), text_params.model_dump(), int(image.dim), int(text.dim))
        return matcher.attach_encoders(image, text).eval()
    if int(image.dim) != int(text.dim):
        raise ParamsError(
            f"encoders {image_params.name!r} (dim {image.dim}) and {text_params.name!r} (dim {text.dim}) "
            "do not share an embedding space; evaluate a trained matcher or set untrained_heads"
        )
    return EncoderPair(image, text, create("similarity", ref.similarity))
