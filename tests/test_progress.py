"""Progress of long steps: what the core reports, the lines a terminal shows and the Prefect bars."""

from __future__ import annotations

import re

import pytest
import torch

from itm_core.encode.embed import encode
from itm_core.encode.features import FeatureSplit
from itm_core.models.matcher import Matcher
from itm_core.models.training import ContrastiveTraining, train_contrastive
from itm_core.ops.run_progress import artifact_key
from itm_core.progress import Step, Tracker, duration, listening, print_line, scope


def heard() -> tuple[list[tuple[str, bool]], object]:
    lines: list[tuple[str, bool]] = []
    return lines, lambda step, finished: lines.append((step.line(finished), finished))


def split(n: int, seed: int) -> FeatureSplit:
    g = torch.Generator().manual_seed(seed)
    return FeatureSplit(torch.randn(n, 12, generator=g), torch.randn(n, 8, generator=g), torch.arange(n))


def test_nothing_is_reported_or_printed_without_a_listener(capsys):
    tracker = Tracker("quiet", 3, "epoch")
    for _ in range(3):
        tracker.advance()
    tracker.finish()
    assert capsys.readouterr().out == "" and tracker.step.done == 3


def test_training_reports_every_epoch_with_its_figure_pace_and_time_left():
    lines, listener = heard()
    matcher = Matcher({"name": "a"}, {"name": "b"}, 12, 8, embed_dim=4, hidden_dim=0)
    with listening(listener), scope("bilinear"):
        train_contrastive(matcher, split(32, 0), split(16, 1), ContrastiveTraining(epochs=3, batch_size=8))
    progress = [text for text, finished in lines if not finished]
    assert len(progress) == 3 and [text for text, finished in lines if finished] == [lines[-1][0]]
    assert progress[0].startswith("bilinear / contrastive heads: epoch 1 of 3, loss ")
    assert re.search(r"val_rsum [0-9.]+; [0-9.]+ (s|ms)? ?.*, at most [0-9.]+ s left$", progress[0]), progress[0]
    assert progress[-1].endswith("at most 0.0 s left")
    assert re.match(r"bilinear / contrastive heads: 3 epochs in [0-9.]+ s \(best epoch [123]\)$", lines[-1][0])


def test_a_throttled_step_reports_at_most_that_often_and_once_when_it_ends():
    lines, listener = heard()
    with listening(listener):
        tracker = Tracker("encoding", 1000, "image", every_s=3600)
        for _ in range(10):
            tracker.advance(100)
        tracker.step.started -= 3600  # an hour-long step: its end is worth a line
        tracker.finish()
    assert lines == [(lines[0][0], True)] and lines[0][0].startswith("encoding: 1,000 images in 1 h 00 min")


def test_encoding_reports_items_a_second_and_time_left(monkeypatch):
    from itm_core import create
    from itm_core.encode import embed as embed_module

    monkeypatch.setattr(embed_module, "PROGRESS_EVERY_S", 0.0)
    lines, listener = heard()
    encoder = create("encoder", "tfidf", max_features=16)
    encoder.fit([f"a red square number {i}" for i in range(20)])
    with listening(listener):
        encode(encoder, [f"a blue circle number {i}" for i in range(300)], None, desc="captions")
    assert re.match(r"captions: caption \d+ of 300; [0-9,]+ captions a second, about [0-9.]+ s left", lines[0][0])
    assert lines[-1][1] and lines[-1][0].startswith("captions: 300 captions in ")


def test_lines_and_durations_read_as_a_person_would_write_them(capsys):
    step = Step("fusion benchmark", 6, "fusion", done=2, note="gated done")
    step.started -= 610
    assert step.line() == "fusion benchmark: fusion 2 of 6, gated done; 5 min 05 s a fusion, about 20 min 20 s left"
    print_line(step, True)
    assert capsys.readouterr().out == "fusion benchmark: 2 fusions in 10 min 10 s (gated done)\n"
    assert [duration(s) for s in (4.25, 42, 209, 3900)] == ["4.2 s", "42 s", "3 min 29 s", "1 h 05 min"]
    assert artifact_key("bilinear / ITM head") == "bilinear-itm-head"


@pytest.mark.parametrize("every_s", [0.0, 5.0])
def test_listeners_hear_only_inside_their_block(every_s):
    lines, listener = heard()
    with listening(listener):
        Tracker("inside", 1, "epoch", every_s=every_s).advance()
    Tracker("outside", 1, "epoch").advance()
    assert all("outside" not in text for text, _ in lines)
