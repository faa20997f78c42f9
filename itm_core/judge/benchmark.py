"""The fusion benchmark: every fusion method trained on the same data, seed and budget, for ITM
(with reranking), the compositional probe and VQA, against plain contrastive similarity."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from itm_core.contract.components import Encoder
from itm_core.contract.registry import create
from itm_core.data import ImageTextSet
from itm_core.encode.embed import EmbeddingCache, encode_features
from itm_core.encode.features import ModalityFeatures
from itm_core.errors import ParamsError
from itm_core.judge.intervals import bounds, recall_intervals
from itm_core.models.head_training import HeadTraining, ITMOptions, train_itm, train_vqa
from itm_core.models.heads import (
    FusionHead,
    ITMHead,
    PairSet,
    QASet,
    evaluate_itm,
    evaluate_vqa,
    parameter_count,
    probe_pair_scores,
)
from itm_core.models.matcher import Matcher
from itm_core.models.rerank import DIRECTIONS, Choice, candidates, choose_both, itm_only, report, reranked
from itm_core.models.retrieval import Ranks, ranks, recall_metrics
from itm_core.models.token_reader import TokenReader

# the token reader's width and output: what a fusion of pooled features gets per text beside the pooled feature
READER_WIDTH = 128
PROBE_TRUE = "probe_true"
PROBE_NEGATIVES = ("neg_color", "neg_shape", "neg_position")
QA = "qa"


R1 = ("i2t_r1", "t2i_r1")  # the recalls the fusion leaderboard shows, with their intervals


def has_probe(data: ImageTextSet) -> bool:
    return PROBE_TRUE in data.image_extras and all(k in data.image_extras for k in PROBE_NEGATIVES)


def has_qa(data: ImageTextSet) -> bool:
    return QA in data.image_extras


@dataclass
class SplitFeatures:
    """What the benchmark needs of one split, encoded once."""

    data: ImageTextSet
    image: ModalityFeatures
    text: ModalityFeatures
    probe: dict[str, ModalityFeatures] | None = None
    questions: ModalityFeatures | None = None
    question_image: torch.Tensor | None = None
    answers: list[str] | None = None
    kinds: list[str] | None = None


def encode_split_features(
    image_encoder: Encoder,
    text_encoder: Encoder,
    data: ImageTextSet,
    cache: EmbeddingCache,
    tokens: bool,
    probe: bool,
    text_tokens: bool | None = None,
) -> SplitFeatures:
    """Images and captions (pooled, and tokens when a fusion needs them: ``tokens`` for both, ``text_tokens``
    for the texts alone, by default as ``tokens``), probe captions and questions."""
    text_tokens = tokens if text_tokens is None else text_tokens or tokens
    out = SplitFeatures(
        data=data,
        image=encode_features(
            image_encoder, [str(p) for p in data.image_paths()], cache, tokens, desc=f"{data.name} images"
        ),
        text=encode_features(text_encoder, data.captions, cache, text_tokens, desc=f"{data.name} captions"),
    )
    tokens = text_tokens  # probe captions and questions are texts
    if probe and has_probe(data):
        out.probe = {
            k: encode_features(text_encoder, list(data.image_extras[k]), cache, tokens)
            for k in (PROBE_TRUE, *PROBE_NEGATIVES)
        }
    if has_qa(data):
        rows = [(i, q) for i, qa in enumerate(data.image_extras[QA]) for q in qa]
        out.questions = encode_features(
            text_encoder, [q["question"] for _, q in rows], cache, tokens, desc=f"{data.name} questions"
        )
        out.question_image = torch.tensor([i for i, _ in rows], dtype=torch.long)
        out.answers = [q["answer"] for _, q in rows]
        out.kinds = [q.get("type", "all") for _, q in rows]
    return out


def pair_set(f: SplitFeatures, matcher: Matcher, dataset_negatives: bool = False) -> PairSet:
    """The split with the contrastive matcher's embeddings (mined for hard negatives, and the ITM prior);
    with ``dataset_negatives``, the images' own hard-negative captions follow the captions."""
    parts, negatives, canonical = [f.text], None, None
    if dataset_negatives and f.probe is not None:
        n_img, n_cap = len(f.image), len(f.text)
        parts += [f.probe[k] for k in (PROBE_TRUE, *PROBE_NEGATIVES)]
        canonical = n_cap + torch.arange(n_img)
        negatives = (
            n_cap + (1 + torch.arange(len(PROBE_NEGATIVES))).unsqueeze(0) * n_img + torch.arange(n_img).unsqueeze(1)
        )
    text = ModalityFeatures.concat(parts) if len(parts) > 1 else f.text
    with torch.no_grad():
        matcher.eval()
        return PairSet(
            f.image,
            text,
            torch.tensor(f.data.caption_image),
            matcher.embed_image_features(f.image.pooled),
            matcher.embed_text_features(text.pooled),
            negatives,
            canonical,
            image_groups(f.data),
        )


def image_groups(data: ImageTextSet) -> torch.Tensor | None:
    """Duplicate images share an id: those with the same canonical caption (``probe_true``), when the data has one."""
    if PROBE_TRUE not in data.image_extras:
        return None
    ids: dict[str, int] = {}
    return torch.tensor([ids.setdefault(c, len(ids)) for c in data.image_extras[PROBE_TRUE]], dtype=torch.long)


def probe_set(f: SplitFeatures, matcher: Matcher) -> PairSet:
    """Each image with its true canonical caption (rows ``0..N-1``), then one block of ``N`` per negative kind."""
    assert f.probe is not None  # called for splits with probe captions
    text = ModalityFeatures.concat([f.probe[k] for k in (PROBE_TRUE, *PROBE_NEGATIVES)])
    with torch.no_grad():
        matcher.eval()
        return PairSet(
            f.image,
            text,
            torch.arange(len(f.image)),
            matcher.embed_image_features(f.image.pooled),
            matcher.embed_text_features(text.pooled),
            kinds=PROBE_NEGATIVES,
        )


def qa_set(f: SplitFeatures, vocabulary: dict[str, int]) -> QASet:
    assert f.questions is not None and f.question_image is not None and f.answers is not None and f.kinds is not None
    answers = torch.tensor([vocabulary.get(a, -1) for a in f.answers], dtype=torch.long)
    return QASet(f.image, f.questions, f.question_image, answers, f.kinds)


@dataclass
class BenchmarkData:
    """The splits as the heads see them, built once and shared by every method: the pair sets (with
    the matcher's embeddings), the probe sets, and the matcher's own test ranks."""

    features: dict[str, SplitFeatures]
    train: PairSet
    val: PairSet
    test: PairSet
    val_probe: PairSet | None
    test_probe: PairSet | None
    base: Ranks
    val_base: Ranks | None = None
    shared_reader: bool = False  # every text's pooled feature is followed by the shared reader's vector


def prepare(features: dict[str, SplitFeatures], matcher: Matcher, dataset_negatives: bool = True) -> BenchmarkData:
    """Everything the methods share; the train set carries the dataset's negatives when asked for."""
    test, val = pair_set(features["test"], matcher), pair_set(features["val"], matcher)
    return BenchmarkData(
        features=features,
        train=pair_set(features["train"], matcher, dataset_negatives),
        val=val,
        test=test,
        val_probe=probe_set(features["val"], matcher) if features["val"].probe is not None else None,
        test_probe=probe_set(features["test"], matcher) if features["test"].probe is not None else None,
        base=ranks(test.image_emb, test.caption_emb, test.caption_image, matcher.similarity),
        val_base=ranks(val.image_emb, val.caption_emb, val.caption_image, matcher.similarity),
    )


def similarity_results(data: BenchmarkData) -> dict[str, float]:
    """Plain contrastive similarity: test retrieval and, when the data has it, the probe."""
    metrics = {f"test_{k}": v for k, v in recall_metrics(data.base).items()}
    found = recall_intervals(data.base, data.features["test"].data.caption_image, R1)
    metrics.update({f"test_{k}": v for k, v in bounds(found).items()})
    probe = data.test_probe
    if probe is not None:
        metrics.update(probe_pair_scores(lambda i, t: (probe.image_emb[i] * probe.text_emb[t]).sum(-1), probe))
    return metrics


def benchmark_fusion(
    name: str,
    fusion_options: dict[str, Any],
    data: BenchmarkData,
    options: ITMOptions,
    itm_training: HeadTraining,
    vqa_training: HeadTraining | None,
    seed: int = 0,
    on_epoch: Callable[[str, int, dict[str, float]], None] | None = None,
    on_itm: Callable[[ITMHead], None] | None = None,
) -> dict[str, float]:
    """Train and judge one fusion method: its ITM head (accuracy, AUC, probe, reranked retrieval)
    and, when the data has questions and ``vqa_training`` is given, its VQA head.

    Reranking: the head reorders each test query's contrastive top ``rerank_k`` by its ITM logit plus
    a weight times the contrastive similarity, with ``k`` (at most ``options.rerank_k``, or none) and the
    weight chosen per direction on the validation split (``reranked_*``); ``itm_only_*`` is the ITM
    logit alone over the top ``rerank_k``."""
    train, val, test = (data.features[s] for s in ("train", "val", "test"))
    tokens = uses_tokens([name])
    rerank_k = options.rerank_k
    # fusions of tokens read them themselves; with text_reader tokens each head trains its own reader
    read = not tokens and options.text_reader == "tokens"
    if options.text_reader == "shared" and not data.shared_reader:
        raise ParamsError(
            "text_reader shared: train the shared reader first (itm_core.judge.shared_reader.share_reader), "
            "or use text_reader tokens, pooled or auto"
        )

    def fusion() -> Any:
        image, text = train.image.tokens if tokens else None, train.text.tokens if tokens else None
        image_dim = int((image if image is not None else train.image.pooled).shape[-1])
        text_dim = int((text if text is not None else train.text.pooled).shape[-1]) + (READER_WIDTH if read else 0)
        return create("fusion", name, image_dim=image_dim, text_dim=text_dim, **fusion_options)

    def reader() -> TokenReader | None:
        if not read:
            return None
        if train.text.tokens is None:
            raise ParamsError(
                "text_reader tokens needs the texts' token features; encode them (encode_split_features with "
                "text_tokens)"
            )
        return TokenReader(int(train.text.tokens.shape[-1]), READER_WIDTH, READER_WIDTH)

    start = time.perf_counter()
    itm = ITMHead(fusion(), input_dropout=itm_training.input_dropout, text_reader=reader())
    result = train_itm(
        itm,
        data.train,
        data.val,
        itm_training,
        options,
        seed,
        (lambda e, m: on_epoch("itm", e, m)) if on_epoch else None,
        data.val_probe,
        data.val_base,
    )
    if on_itm is not None:
        on_itm(itm)
    metrics: dict[str, float] = {
        "parameters": float(parameter_count(itm)),
        "itm_best_epoch": float(result.best_epoch),
        "text_reader_tokens": float(read or (data.shared_reader and not tokens)),
    }
    metrics.update(evaluate_itm(itm, data.test))
    choice = choose_both(candidates(itm, data.val, rerank_k, data.val_base)) if data.val_base is not None else None
    found = candidates(itm, data.test, rerank_k, data.base)
    chosen = choice or {d: Choice(rerank_k, 0.0) for d in DIRECTIONS}
    metrics.update(report(found, chosen))
    owners = test.data.caption_image
    for prefix, r in (("reranked", reranked(found, chosen)), ("itm_only", itm_only(found))):
        metrics.update({f"{prefix}_{k}": v for k, v in bounds(recall_intervals(r, owners, R1)).items()})
    probe = data.test_probe
    if probe is not None:
        metrics.update(probe_pair_scores(lambda i, t: itm.predict_pairs(probe, i, t), probe))
    if vqa_training is not None and train.answers is not None and test.questions is not None:
        vocabulary = {a: n for n, a in enumerate(sorted(set(train.answers)))}
        vqa = FusionHead(
            fusion(), outputs=len(vocabulary), input_dropout=vqa_training.input_dropout, text_reader=reader()
        )
        vqa_result = train_vqa(
            vqa,
            qa_set(train, vocabulary),
            qa_set(val, vocabulary),
            vqa_training,
            seed,
            (lambda e, m: on_epoch("vqa", e, m)) if on_epoch else None,
        )
        metrics.update(evaluate_vqa(vqa, qa_set(test, vocabulary)))
        metrics["vqa_best_epoch"] = float(vqa_result.best_epoch)
        metrics["vqa_parameters"] = float(parameter_count(vqa))
    metrics["train_seconds"] = time.perf_counter() - start
    return metrics


def reads_text_tokens(text_reader: str, text_encoder: Encoder) -> bool:
    """Whether the texts' token features are needed for ``text_reader``: ``shared`` or ``tokens``, or
    ``auto`` with a text encoder that gives them; ``shared`` or ``tokens`` with one that does not is an
    error naming it."""
    has_tokens = hasattr(text_encoder, "encode_tokens")
    if text_reader in ("shared", "tokens") and not has_tokens:
        name = getattr(text_encoder, "name", type(text_encoder).__name__)
        raise ParamsError(
            f"text_reader {text_reader} needs token features, and the text encoder {name!r} gives none (no "
            "encode_tokens); use text_reader: pooled or auto, or a text encoder with tokens such as minilm"
        )
    return text_reader in ("shared", "tokens") or (text_reader == "auto" and has_tokens)


def uses_tokens(names: list[str]) -> bool:
    """Whether any of these fusions needs token-level features (registered with ``inputs="tokens"``)."""
    from itm_core.contract.registry import spec

    return any(spec("fusion", n).metadata.get("inputs", "pooled") == "tokens" for n in names)


def attention_examples(itm: ITMHead, f: SplitFeatures, n: int = 4) -> list[tuple[str, str, torch.Tensor]] | None:
    """``(image path, caption, (side, side) attention map)`` for the first ``n`` images of a split with
    their first caption, from an ITM head whose fusion attends to patches; None for other fusions."""
    data = f.data
    rows = [i for i in range(min(n, len(data))) if data.captions_of(i)]
    first: dict[int, int] = {}
    for c, owner in enumerate(data.caption_image):
        first.setdefault(int(owner), c)
    maps = itm.attention_maps(f.image, rows, f.text, [first[i] for i in rows])
    if maps is None:
        return None
    side = round(maps.shape[1] ** 0.5)
    if side * side != maps.shape[1]:
        return None
    return [(str(data.image_path(i)), data.captions[first[i]], maps[k].view(side, side)) for k, i in enumerate(rows)]
