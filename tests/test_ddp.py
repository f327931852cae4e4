"""Two-process data-parallel training on CPU (gloo), as ``accelerate launch --multi_gpu
--num_processes 2 train.py`` runs it, with a routing that leaves one expert idle in every
step: sparse experts must not break DDP (an expert without gradient in a step is an unused
parameter), the replicas must stay identical (gradients all-reduced, also for the backbone
that joins in stage 2), and the idle expert must not move."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_training import TINY

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "extra",
    [(), ("--activation_checkpointing", "True")],
    ids=["plain", "activation-checkpointing"],
)
def test_two_process_ddp_with_an_idle_expert(tiny_corpus, tmp_path, extra):
    """(transformers turns DDP's unused-parameter search off under activation checkpointing;
    MeritTrainer keeps it on, or the idle expert fails the second step.)"""
    out = tmp_path / "ranks"
    command = [
        *(sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"),
        *("--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"),
        *("--dynamo_backend", "no", "--num_cpu_threads_per_process", "1", "--main_process_port"),
        "29517",
        str(ROOT / "tests" / "fixtures" / "ddp_idle_expert.py"),
        str(out),
        *TINY,
        *("--dataset", str(tiny_corpus), "--output_dir", str(tmp_path / "run")),
        *("--max_steps", "4", "--backbone_frozen_steps", "2"),
        *("--per_device_train_batch_size", "2", "--max_train_seconds", "1"),
        *("--eval_strategy", "no", "--load_best_model_at_end", "False"),
        *("--save_strategy", "no", "--do_predict", "False", "--report_to", "none"),
        *("--disable_tqdm", "True", "--seed", "3"),
        *extra,
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = [torch.load(out / f"rank{r}.pt") for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert [r["chosen"] for r in ranks] == [0, 0]  # the last expert never got a frame
    before, after, other = ranks[0]["before"], ranks[0]["after"], ranks[1]["after"]
    for name, value in after.items():  # replicas identical after 4 all-reduced steps
        torch.testing.assert_close(other[name], value, rtol=0, atol=0, msg=name)
    idle = [k for k in after if ".experts." in k and k.split(".experts.")[1].startswith("3.")]
    assert idle and all(torch.equal(after[k], before[k]) for k in idle)
    used = [k for k in after if ".experts.0." in k]
    assert any(not torch.equal(after[k], before[k]) for k in used)
    backbone = [k for k in after if k.startswith("backbone.") and after[k].is_floating_point()]
    assert any(not torch.equal(after[k], before[k]) for k in backbone)  # stage 2 trained it
