"""The component interfaces and the output contracts checked at their boundary.

A plugin's factory may return any object with the attributes and methods below; subclassing the
ABCs is a convenience, not a requirement. :func:`itm_core.create` wraps what a factory returns in a
:class:`Checked` proxy that verifies every output (shape, dtype, finite values, batch size) and names
the plugin when one is wrong.
"""

from __future__ import annotations

import functools
import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from itm_core.errors import PluginError

if TYPE_CHECKING:
    import torch

    from itm_core.contract.evidence import UnitScores
    from itm_core.data.pairs import ImageTextSet

KINDS = ("encoder", "similarity", "fusion", "generator", "metric", "dataset", "explainer")
MODALITIES = ("image", "text")
GENERATOR_TASKS = ("image-to-text", "text-to-image")


class ContractError(PluginError, RuntimeError):
    """A component broke its output contract; the message names the plugin and the rule."""


class Encoder(ABC):
    """Maps a batch of PIL images or strings to a float tensor of shape ``(N, dim)``.

    ``modality`` is ``"image"`` or ``"text"``. An encoder whose output depends on data it has seen
    (TF-IDF, a visual vocabulary) sets ``requires_fit`` and implements ``fit``, ``get_state`` and
    ``set_state`` so a trained matcher can be saved and reloaded with it.

    An encoder that can give token- or patch-level features (for cross-attention fusion) sets
    ``token_dim`` and implements ``encode_tokens(items) -> (tokens (N, L, token_dim), mask (N, L))``
    with a fixed ``L``.

    A ``trainable`` encoder can be fine-tuned (an unlocked tower): it also implements
    ``train_module()`` (the ``torch.nn.Module`` whose parameters to update) and
    ``forward_features(items)`` (``encode`` with gradients), and returns its tuned weights from
    ``get_state`` once ``train_module`` has been called.

    An encoder whose unit-vector outputs live in a joint space shared with an encoder of the other
    modality (the two towers of one CLIP checkpoint) names that space in ``space``; two encoders with
    equal ``space`` are a matcher as they are (``retrain`` with ``training.heads: none``).
    """

    modality: str
    dim: int
    trainable: bool = False
    requires_fit: bool = False
    space: str | None = None
    # set on what ``create`` returns: the registered name and the options it was built with
    name: str
    options: dict[str, Any]
    # declared, not defined: an encoder with token features has both, and ``hasattr`` tells which do
    token_dim: int
    encode_tokens: Callable[[Sequence[Any]], tuple[torch.Tensor, torch.Tensor]]
    # declared likewise: an encoder that can run compiled (see itm_core.encode.runtime)
    set_compiled: Callable[..., None]

    @abstractmethod
    def encode(self, items: Sequence[Any]) -> torch.Tensor: ...

    def fit(self, items: Sequence[Any]) -> None:
        """Learn data-dependent state (vocabulary, codebook) from training items."""
        return None

    def get_state(self) -> Any:
        """Picklable fitted state, or ``None`` when the encoder has none."""
        return None

    def set_state(self, state: Any) -> None:
        """Restore what :meth:`get_state` returned."""
        return None


class TrainableEncoder(Protocol):
    """What a ``trainable`` encoder adds to :class:`Encoder` so that it can be fine-tuned (an unlocked tower)."""

    name: str
    modality: str
    dim: int

    def train_module(self) -> torch.nn.Module:
        """The module whose parameters are updated."""
        ...

    def forward_features(self, items: Sequence[Any]) -> torch.Tensor:
        """``encode`` with gradients."""
        ...


class Similarity(ABC):
    """Scores two embedding sets: ``score(a (N, D), b (M, D)) -> (N, M)``; higher is more similar."""

    @abstractmethod
    def score(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor: ...

    def pairwise(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Scores of aligned rows, ``(N,)``; override when it is cheaper than the matrix diagonal."""
        import torch

        return torch.cat([self.score(a[i : i + 256], b[i : i + 256]).diagonal() for i in range(0, len(a), 256)])


class Fusion(ABC):
    """Fuses image and text features of aligned pairs into a joint representation ``(N, dim)``.

    ``inputs = "pooled"``: ``fuse(image (N, image_dim), text (N, text_dim))``.
    ``inputs = "tokens"``: ``fuse(image (N, P, image_dim), text (N, T, text_dim), image_mask (N, P),
    text_mask (N, T))`` on patch- and token-level features (masks are ``True`` for real tokens).
    Trainable fusions are ``torch.nn.Module`` subclasses as well; the flows that use them train them.

    A fusion may also be *factored*: ``embed_image(image)`` and ``embed_text(text)`` compute what
    each input gives alone (row by row) and ``combine(image_part, text_part, image_mask, text_mask)``
    the pair's part, with ``combine(embed_image(image), embed_text(text), ...)`` equal to ``fuse``. The
    heads then run each distinct image and text of a batch through its part once, however many pairs
    it is in (an image scored against 16 candidate captions is projected once, not 16 times).
    """

    image_dim: int
    text_dim: int
    dim: int
    inputs: ClassVar[str] = "pooled"

    @abstractmethod
    def fuse(
        self,
        image: torch.Tensor,
        text: torch.Tensor,
        image_mask: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
    ) -> torch.Tensor: ...


class Generator(ABC):
    """``task`` is ``"image-to-text"`` (inputs: PIL images, outputs: strings) or ``"text-to-image"``."""

    task: ClassVar[str]

    @abstractmethod
    def generate(self, inputs: Sequence[Any], **options: Any) -> list[Any]: ...


class Metric(ABC):
    """Computes named scalar results. ``task`` says which keyword inputs ``compute`` takes."""

    task: ClassVar[str]

    @abstractmethod
    def compute(self, *args: Any, **inputs: Any) -> dict[str, float]:
        """The metric's named values from the keyword inputs its ``task`` names."""

    def units(self, *args: Any, **inputs: Any) -> UnitScores:
        """Optional: the same values as :class:`~itm_core.contract.evidence.UnitScores`, per test unit (an
        image, a prompt), for a metric that is a function of sums over units. With it the metric gets
        bootstrap intervals, and it can decide a promotion by evidence. Metrics that are not (FD,
        KID) leave it out."""
        raise NotImplementedError(f"{type(self).__name__} gives no per-unit scores")


class Dataset(ABC):
    """Yields image-text pairs with splits, as an :class:`itm_core.data.pairs.ImageTextSet`."""

    @abstractmethod
    def load(self) -> ImageTextSet: ...


class Explainer(ABC):
    """Says why a matcher scores an image-text pair as it does. ``modalities`` names what it explains
    (``"image"``: a heat map, ``"text"``: a value per word); ``explain`` gets a
    :class:`itm_core.contract.explaining.PairScorer`, a PIL image and the text, and returns an
    :class:`itm_core.contract.explaining.Attribution`."""

    modalities: ClassVar[tuple[str, ...]] = ("image", "text")

    @abstractmethod
    def explain(self, scorer: Any, image: Any, text: str) -> Any: ...


# --- output contracts -----------------------------------------------------------------------------


def _check_matrix(t: Any, rows: int, cols: int | None, what: str) -> None:
    import torch

    if not isinstance(t, torch.Tensor):
        raise ContractError(f"{what} must return a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise ContractError(f"{what} must return a floating-point tensor, got {t.dtype}")
    expected = (rows,) if cols is None else (rows, cols)
    if tuple(t.shape) != expected:
        raise ContractError(f"{what} returned shape {tuple(t.shape)}, expected {expected}")
    if not bool(torch.isfinite(t).all()):
        raise ContractError(f"{what} returned non-finite values (NaN or inf)")


def _check_encode(c: Any, out: Any, args: tuple, kwargs: dict) -> None:
    items = args[0] if args else kwargs["items"]
    _check_matrix(out, len(items), int(c.dim), "encode()")


def _check_tokens(c: Any, out: Any, args: tuple, kwargs: dict) -> None:
    import torch

    items = args[0] if args else kwargs["items"]
    if not (isinstance(out, tuple) and len(out) == 2):
        raise ContractError("encode_tokens() must return a (tokens, mask) tuple")
    tokens, mask = out
    if (
        not isinstance(tokens, torch.Tensor)
        or tokens.ndim != 3
        or len(tokens) != len(items)
        or tokens.shape[2] != int(c.token_dim)
    ):
        shape = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
        raise ContractError(
            f"encode_tokens() returned tokens of shape {shape}, expected ({len(items)}, L, {c.token_dim})"
        )
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != tuple(tokens.shape[:2]):
        raise ContractError(f"encode_tokens() must return a bool mask of shape {tuple(tokens.shape[:2])}")
    if not bool(torch.isfinite(tokens).all()):
        raise ContractError("encode_tokens() returned non-finite values (NaN or inf)")


def _check_score(c: Any, out: Any, args: tuple, kwargs: dict) -> None:
    a = args[0] if len(args) > 0 else kwargs["a"]
    b = args[1] if len(args) > 1 else kwargs["b"]
    _check_matrix(out, len(a), len(b), "score()")


def _check_pairwise(c: Any, out: Any, args: tuple, kwargs: dict) -> None:
    a = args[0] if args else kwargs["a"]
    _check_matrix(out, len(a), None, "pairwise()")


def _check_fuse(c: Any, out: Any, args: tuple, kwargs: dict) -> None:
    image = args[0] if args else kwargs["image"]
    _check_matrix(out, len(image), int(c.dim), "fuse()")


def _check_combine(c: Any, out: Any, args: tuple, kwargs: dict) -> None:
    image = args[0] if args else kwargs["image"]
    _check_matrix(out, len(image), int(c.dim), "combine()")


def _check_generate(c: Any, out: Any, args: tuple, kwargs: dict) -> None:
    inputs = args[0] if args else kwargs["inputs"]
    if not isinstance(out, list) or len(out) != len(inputs):
        got = f"{type(out).__name__} of length {len(out)}" if hasattr(out, "__len__") else type(out).__name__
        raise ContractError(f"generate() must return a list with one output per input ({len(inputs)}), got {got}")


def _check_compute(c: Any, out: Any, args: tuple, kwargs: dict) -> None:
    if not isinstance(out, dict) or not all(isinstance(k, str) for k in out):
        raise ContractError(f"compute() must return a dict of name -> float, got {type(out).__name__}")
    for key, value in out.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(float(value)):
            raise ContractError(f"compute() returned {key}={value!r}; values must be real numbers")


def _check_units(c: Any, out: Any, args: tuple, kwargs: dict) -> None:
    import numpy as np

    from itm_core.contract.evidence import UnitScores

    if not isinstance(out, UnitScores):
        raise ContractError(f"units() must return a UnitScores, got {type(out).__name__}")
    if out.columns.ndim != 2 or not np.isfinite(out.columns).all():
        raise ContractError(f"units() must give finite columns of shape (units, k), got shape {out.columns.shape}")


def _check_load(c: Any, out: Any, args: tuple, kwargs: dict) -> None:
    from itm_core.data.pairs import ImageTextSet

    if not isinstance(out, ImageTextSet):
        raise ContractError(f"load() must return an ImageTextSet, got {type(out).__name__}")


def _check_explain(c: Any, out: Any, args: tuple, kwargs: dict) -> None:
    import numpy as np

    text = args[2] if len(args) > 2 else kwargs["text"]
    for attr in ("score", "heat", "word_scores"):
        if not hasattr(out, attr):
            raise ContractError(
                f"explain() must return an Attribution (score, heat, words, word_scores), got {type(out).__name__}"
            )
    if not math.isfinite(float(out.score)):
        raise ContractError(f"explain() returned a non-finite score {out.score!r}")
    modalities = tuple(getattr(c, "modalities", ("image", "text")))
    if "image" in modalities:
        heat = out.heat
        if not isinstance(heat, np.ndarray) or heat.ndim != 2 or heat.size == 0 or not np.isfinite(heat).all():
            got = f"shape {heat.shape}" if isinstance(heat, np.ndarray) else type(heat).__name__
            raise ContractError(f"explain() must return a finite 2-D heat map for an image explainer, got {got}")
    if "text" in modalities:
        scores = out.word_scores
        n = len(text.split())
        if scores is None or len(scores) != n or not all(math.isfinite(float(v)) for v in scores):
            raise ContractError(
                f"explain() must return {n} finite word scores (one per word) for a text explainer, got {scores!r}"
            )


_OUTPUT_CHECKS: dict[str, dict[str, Callable[[Any, Any, tuple, dict], None]]] = {
    "encoder": {"encode": _check_encode, "encode_tokens": _check_tokens},
    "similarity": {"score": _check_score, "pairwise": _check_pairwise},
    "fusion": {"fuse": _check_fuse, "combine": _check_combine},
    "generator": {"generate": _check_generate},
    "metric": {"compute": _check_compute, "units": _check_units},
    "dataset": {"load": _check_load},
    "explainer": {"explain": _check_explain},
}

_REQUIRED: dict[str, tuple[str, ...]] = {
    "encoder": ("modality", "dim", "encode"),
    "similarity": ("score",),
    "fusion": ("image_dim", "text_dim", "dim", "fuse"),
    "generator": ("task", "generate"),
    "metric": ("compute",),
    "dataset": ("load",),
    "explainer": ("explain",),
}


def _lacks(component: Any, attr: str) -> bool:
    try:
        inspect.getattr_static(component, attr)
    except AttributeError:
        return not hasattr(component, attr)  # one that ``__getattr__`` provides
    return False


class Checked:
    """A transparent proxy that checks a component's outputs against its kind's contract.

    Attribute reads and writes go to the wrapped component; the checked methods raise
    :class:`ContractError` naming the component and its plugin when an output is wrong.
    """

    def __init__(self, component: Any, kind: str, name: str, plugin: str, options: dict[str, Any]) -> None:
        object.__setattr__(self, "_component", component)
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "plugin", plugin)
        object.__setattr__(self, "options", dict(options))
        # looked up statically: an attribute computed on first use (a ``dim`` that loads a model) is not run here
        missing = [a for a in _REQUIRED[kind] if _lacks(component, a)]
        if missing:
            raise ContractError(f"{self._label()} lacks {', '.join(missing)} required of a {kind}")
        if kind == "encoder" and component.modality not in MODALITIES:
            raise ContractError(f"{self._label()} has modality {component.modality!r}; expected one of {MODALITIES}")
        if kind == "generator" and component.task not in GENERATOR_TASKS:
            raise ContractError(f"{self._label()} has task {component.task!r}; expected one of {GENERATOR_TASKS}")

    def _label(self) -> str:
        return f"{self.kind} {self.name!r} (plugin {self.plugin!r})"

    @property
    def unwrapped(self) -> Any:
        return self._component

    def __reduce__(self) -> Any:  # pickles (to another process) as the component with its wrapper
        return (type(self), (self._component, self.kind, self.name, self.plugin, self.options))

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__") or attr == "_component":  # not the component's: e.g. while unpickling
            raise AttributeError(attr)
        value = getattr(self._component, attr)
        check = _OUTPUT_CHECKS[self.kind].get(attr)
        if check is None or not callable(value):
            return value

        @functools.wraps(value)
        def checked(*args: Any, **kwargs: Any) -> Any:
            out = value(*args, **kwargs)
            try:
                check(self._component, out, args, kwargs)
            except ContractError as exc:
                raise ContractError(f"{self._label()}: {exc}") from None
            return out

        return checked

    def __setattr__(self, attr: str, value: Any) -> None:
        setattr(self._component, attr, value)

    def __repr__(self) -> str:
        return f"<{self._label()} {self.options}>"
