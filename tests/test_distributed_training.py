"""Data-parallel contrastive training: two gloo processes match one process on the same global batch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

SCRIPT = """
import sys, torch
from itm_core.models.distributed import init_from_env, train_steps
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
    subprocess.run([str(torchrun), "--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
                    str(script), str(tmp_path / "two.pt")], check=True, env=env, timeout=300)
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert len(one["losses"]) == 4 and one["losses"][-1] < one["losses"][0]  # it learns
    assert torch.allclose(torch.tensor(one["losses"]), torch.tensor(two["losses"]), atol=1e-5)
    for name, weight in one["state"].items():
        assert torch.allclose(weight, two["state"][name], atol=1e-5), name
