"""One text reader for every fusion of a benchmark (``text_reader: shared``).

A :class:`~itm_core.models.token_reader.TokenReader` learns, with one ITM head, to read each text's token
features into a vector that keeps which word goes with which object. Trained once and then frozen, its
vector follows every text's pooled feature (captions, the dataset's negative captions, probe captions,
questions), so the fusions compared on the benchmark all get the same reading of the texts and train
at the cost of pooled features: reading every distinct text of each batch was most of their time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from itm_core.contract.registry import create
from itm_core.encode.features import ModalityFeatures
from itm_core.judge.benchmark import READER_WIDTH, BenchmarkData, SplitFeatures
from itm_core.models.head_training import HeadTraining, ITMOptions, OnEpoch, train_itm
from itm_core.models.heads import ITMHead, PairSet
from itm_core.models.loop import FitResult
from itm_core.models.token_reader import TokenReader, unpadded

Read = Callable[[ModalityFeatures], ModalityFeatures]


def share_reader(
    data: BenchmarkData,
    fusion: str,
    fusion_options: dict[str, Any],
    training: HeadTraining,
    options: ITMOptions,
    seed: int = 0,
    on_epoch: OnEpoch | None = None,
) -> tuple[BenchmarkData, FitResult]:
    """Train a reader with the ITM head of ``fusion`` (on the benchmark's ITM task, chosen on its
    validation score), then return the data with every text's pooled feature followed by the reader's
    vector, and the reader's training result."""
    train = data.features["train"]
    if train.text.tokens is None:
        raise ValueError("a shared text reader needs the texts' token features (encode_split_features text_tokens)")
    torch.manual_seed(seed)
    token_dim, pooled_dim = int(train.text.tokens.shape[-1]), int(train.text.pooled.shape[-1])
    head = ITMHead(
        create(
            "fusion",
            fusion,
            image_dim=int(train.image.pooled.shape[-1]),
            text_dim=pooled_dim + READER_WIDTH,
            **fusion_options,
        ),
        input_dropout=training.input_dropout,
        text_reader=TokenReader(token_dim, READER_WIDTH, READER_WIDTH),
    )
    result = train_itm(head, data.train, data.val, training, options, seed, on_epoch, data.val_probe, data.val_base)
    return read_texts(data, reader_of(head)), result


def reader_of(head: ITMHead, rows: int = 512) -> Read:
    """The head's trained reader as a function of text features: pooled features followed by the
    reader's vector of each text, read ``rows`` at a time in eval mode."""
    reader, norm = head.text_reader, head.token_norm
    assert reader is not None and norm is not None  # share_reader builds the head with a reader
    reader.eval()

    @torch.no_grad()
    def read(f: ModalityFeatures) -> ModalityFeatures:
        if f.tokens is None or f.mask is None:
            raise ValueError("the shared text reader needs token features for every text it reads")
        out = []
        for start in range(0, len(f), rows):
            tokens, mask = unpadded(f.tokens[start : start + rows], f.mask[start : start + rows])
            out.append(reader(norm(tokens.float()), mask))
        vectors = torch.cat(out).to(f.pooled.dtype) if out else f.pooled.new_zeros(0, reader.out_dim)
        return ModalityFeatures(torch.cat([f.pooled, vectors], 1), f.tokens, f.mask)

    return read


def read_texts(data: BenchmarkData, read: Read) -> BenchmarkData:
    """The benchmark's data with every text feature read: the splits' captions, probe captions and
    questions, and the texts of the pair and probe sets built from them. Features that are one object
    in several places (a split's captions are its pair set's texts) are read once."""
    done: dict[int, ModalityFeatures] = {}

    def once(f: ModalityFeatures) -> ModalityFeatures:
        if id(f) not in done:
            done[id(f)] = read(f)
        return done[id(f)]

    def split(f: SplitFeatures) -> SplitFeatures:
        return dataclasses.replace(
            f,
            text=once(f.text),
            probe={k: once(v) for k, v in f.probe.items()} if f.probe is not None else None,
            questions=once(f.questions) if f.questions is not None else None,
        )

    def pairs(p: PairSet | None) -> Any:
        return dataclasses.replace(p, text=once(p.text)) if p is not None else None

    return dataclasses.replace(
        data,
        features={s: split(f) for s, f in data.features.items()},
        train=pairs(data.train),
        val=pairs(data.val),
        test=pairs(data.test),
        val_probe=pairs(data.val_probe),
        test_probe=pairs(data.test_probe),
        shared_reader=True,
    )
