"""Data-parallel contrastive training: two gloo processes match one process on the same global batch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow  # subprocesses, flows or pip


SCRIPT = """
import sys, torch
from itm_core.models.distributed import train_steps
from itm_core.models.process_group import init_from_env
from itm_core.models.matcher import Matcher
torch.manual_seed(0)
image, text = torch.randn(64, 24), torch.randn(64, 16)
batches = [torch.randperm(64)[:32] for _ in range(4)]
matcher = Matcher({"name": "a"}, {"name": "b"}, 24, 16, embed_dim=8, hidden_dim=32, dropout=0.0)
matcher.image_head.set_statistics(image)
matcher.text_head.set_statistics(text)
ranks = init_from_env()
losses = train_steps(matcher, image, text, batches, 1e-2, ranks)
if ranks.main:
    torch.save({"losses": losses, "state": matcher.state_dict()}, sys.argv[1])
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_on_the_same_global_batch(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(script), str(tmp_path / "one.pt")], check=True, env=env, timeout=300)
    torchrun = Path(sys.executable).parent / "torchrun"
    subprocess.run(
        [
            str(torchrun),
            "--nproc-per-node",
            "2",
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            str(_free_port()),
            str(script),
            str(tmp_path / "two.pt"),
        ],
        check=True,
        env=env,
        timeout=300,
    )
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert len(one["losses"]) == 4 and one["losses"][-1] < one["losses"][0]  # it learns
    assert torch.allclose(torch.tensor(one["losses"]), torch.tensor(two["losses"]), atol=1e-5)
    for name, weight in one["state"].items():
        assert torch.allclose(weight, two["state"][name], atol=1e-5), name


def _history(run_id: str, key: str) -> list[float]:
    from mlflow import MlflowClient

    return [m.value for m in sorted(MlflowClient().get_metric_history(run_id, key), key=lambda m: m.step)]


def test_retrain_in_two_processes_matches_one(prefect_server, mlflow_store, tiny_shapes_options):
    """`training.processes: 2` runs the flow's training loop under torchrun: the same epochs, curves,
    checkpoints and test scores as one process (dropout off, so the steps are the same)."""
    from mlflow import MlflowClient

    from flows.retrain import retrain
    from itm_core.config import RetrainParams

    def run(processes: int) -> dict:
        return retrain(
            RetrainParams.model_validate(
                {
                    "dataset": {"options": tiny_shapes_options},
                    "image_encoder": {"name": "color-histogram"},
                    "text_encoder": {"name": "tfidf"},
                    "training": {
                        "epochs": 4,
                        "batch_size": 16,
                        "dropout": 0.0,
                        "patience": 10,
                        "checkpoint_every": 2,
                        "processes": processes,
                        "precision": "fp32",  # bfloat16 rounds the slices' sums differently from the whole batch's
                    },
                }
            )
        )

    one, two = run(1), run(2)
    assert two["epochs"] == one["epochs"] == 4 and two["best_epoch"] == one["best_epoch"]
    for key in ("train_loss", "val_rsum", "temperature"):
        a, b = _history(one["run_id"], key), _history(two["run_id"], key)
        assert len(a) == len(b) == 4, key
        assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-4), (key, a, b)
    assert _history(one["run_id"], "train_loss")[-1] < _history(one["run_id"], "train_loss")[0]  # it learns
    for metric, value in one["test"].items():
        assert two["test"][metric] == pytest.approx(value, abs=1e-3), metric
    logged = [a.path for a in MlflowClient().list_artifacts(two["run_id"], "checkpoint")]
    assert logged, "the checkpoint written by rank 0 is logged to the run"


def test_processes_must_fit_the_batch():
    from itm_core.config import ContrastiveTraining

    with pytest.raises(ValueError, match=r"training.processes \(8\) is larger than training.batch_size \(4\)"):
        ContrastiveTraining(processes=8, batch_size=4)
