"""Training from a pretrained model (``init=``), freezing (``train.trainable``) and LoRA.

Sources are tiny: an attnlab run dir trained here, its ``latest.pt``, and a GGUF file written
with the ``gguf`` package (tests/pretrained/test_gguf_synthetic.py's writer); the corpus is a
small text file, so the GGUF tokenizer encodes it in a moment.
"""

import json
import shutil
import sys
from dataclasses import replace

import pytest
import torch
from needs_packages import require

from attnlab.data import DataConfig
from attnlab.model import ModelConfig, Transformer
from attnlab.model.lora import LoRALinear, apply_lora, merge_lora, merge_lora_state
from attnlab.pretrained import load_pretrained
from attnlab.train import checkpoint as ckpt
from attnlab.train.config import TrainConfig
from attnlab.train.loop import build_model, train
from attnlab.train.pretrained_init import init_corpus, init_model_config, load_init
from attnlab.train.rundir import config_hash

HYDRA_QUIET = ["hydra/job_logging=none", "hydra/hydra_logging=none", "hydra.output_subdir=null"]
LINE = "Shall I compare thee to a summer's day? Thou art more lovely and more temperate: {}.\n"


def quiet_train(**kw) -> TrainConfig:
    return TrainConfig(**(dict(steps=3, lr=1e-2, min_lr=1e-3, warmup_steps=1, eval_every=0, log_every=1,
                               ckpt_every=0, logger="jsonl", progress=False, device="cpu") | kw))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A text corpus, a trained tiny run dir (dense, byte tokens, context 32) and a GGUF file."""
    tmp = tmp_path_factory.mktemp("init")
    text = tmp / "corpus.txt"
    text.write_text("".join(LINE.format(i) for i in range(300)))
    data = DataConfig(name="text", path=str(text), context=32, batch_size=4, val_tokens=256,
                      cache_dir=str(tmp / "cache"))
    model = ModelConfig(d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, context=32)
    train(model, data, quiet_train(steps=2), tmp / "source")
    files = {"tmp": tmp, "data": data, "run": str(tmp / "source"),
             "pt": str(tmp / "source" / "checkpoints" / "latest.pt")}
    try:
        require("gguf")
    except BaseException:  # the GGUF cases fail with what to install; the others run
        return files
    from pretrained.test_gguf_synthetic import vocab, write_gguf

    tokens, types = vocab()
    cfg = ModelConfig(vocab_size=len(tokens), d_model=48, n_layers=2, n_heads=6, n_kv_heads=2, d_ff=80, context=64)
    torch.manual_seed(1)
    write_gguf(tmp / "tiny.gguf", Transformer(cfg), tokens, types)
    files["gguf"] = f"gguf:{tmp / 'tiny.gguf'}"
    return files


def source_of(env, form: str) -> str:
    if form == "gguf":
        require("gguf")
    return env[form]


def logits(model, idx):
    model.eval()
    with torch.no_grad():
        return model(idx)[0]


# ---------------------------------------------------------------------- init from each form
@pytest.mark.parametrize("form", ["run", "pt", "gguf"])
def test_init_model_at_step_0_is_the_source_model(env, form):
    source = source_of(env, form)
    pre = load_init(source, env["data"])
    model_cfg = init_model_config(pre, {})
    assert model_cfg == pre.config
    corpus = init_corpus(env["data"], pre)
    assert corpus.tokenizer.fingerprint() == pre.tokenizer.fingerprint()  # the model's own tokens
    model, counts = build_model(model_cfg, quiet_train(), pre)
    assert counts["frozen"] == 0
    x = corpus.train_batch(0)[0]
    assert torch.equal(logits(model, x), logits(pre.model, x))


def test_cli_init_trains_from_the_source_with_its_tokenizer(env, tmp_path, monkeypatch, capsys):
    """init=gguf:<file>: the first step's loss is the source model's loss on batch 0 (no step
    taken yet); the run dir loads as a plain model with the GGUF's tokenizer."""
    source = source_of(env, "gguf")
    code, err = run_cli(["init=" + source, "train.steps=1"], env, tmp_path / "run", monkeypatch, capsys)
    assert code in (0, None), err[-3000:]
    pre = load_pretrained(source)
    corpus = init_corpus(env["data"], pre)
    x, y = corpus.train_batch(0)[:2]
    with torch.no_grad():
        source_loss = float(pre.model(x, y)[1])
    first = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()][0]
    assert first["train_loss"] == pytest.approx(source_loss, rel=1e-6)
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    assert record["init"] == source and record["init_fingerprint"] == pre.fingerprint
    assert record["model"]["vocab_size"] == pre.config.vocab_size and record["model"]["d_model"] == 48
    trained = load_pretrained(str(tmp_path / "run"))
    assert trained.tokenizer.fingerprint() == pre.tokenizer.fingerprint()
    assert trained.config.d_model == 48
    mtime = (tmp_path / "run" / "checkpoints" / "latest.pt").stat().st_mtime_ns
    code, err = run_cli(["init=" + source, "train.steps=1"], env, tmp_path / "run", monkeypatch, capsys)
    assert code in (0, None), err[-3000:]  # the same config: a complete run is skipped, not redone
    assert (tmp_path / "run" / "checkpoints" / "latest.pt").stat().st_mtime_ns == mtime
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["config_hash"] == record["config_hash"]


# ---------------------------------------------------------------------- attention conversion
def test_init_with_an_attention_override(env, tmp_path, monkeypatch, capsys):
    code, err = run_cli(["init={run}", "attention=swa8", "train.steps=1"], env, tmp_path / "run", monkeypatch,
                        capsys)
    assert code in (0, None), err[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["layer_specs"] == ["sliding_window(w=8,causal)"] * 2
    # the converted model is the source's weights under the new mask, which changes long-range logits
    pre = load_pretrained(env["run"])
    swa = init_model_config(pre, {"attention": {"swa": {"kind": "sliding_window", "window": 8}},
                                  "layer_pattern": ["swa"]})
    model, _ = build_model(swa, quiet_train(), pre)
    x = torch.randint(0, 256, (1, 32))
    out, ref = logits(model, x), logits(pre.model, x)
    assert torch.equal(out[:, :8], ref[:, :8]) and not torch.allclose(out[:, 9:], ref[:, 9:])


# ---------------------------------------------------------------------- freezing
def test_frozen_parameters_stay_bitwise_and_are_not_saved(env, tmp_path):
    pre = load_pretrained(env["run"])
    trainable = ["norms", "layers.1.mlp.*"]
    cfg = quiet_train(trainable=trainable)
    metrics = train(pre.config, env["data"], cfg, tmp_path / "run", init=pre, config_record={"init": env["run"]})
    assert metrics["checkpoint_weights"] == "trainable"
    state = ckpt.load(tmp_path / "run" / "checkpoints" / "latest.pt")
    assert state["base"] == {"source": env["run"], "fingerprint": pre.fingerprint}
    trained_keys = {"norm.weight", *(f"layers.{i}.{n}.weight" for i in (0, 1)
                                     for n in ("input_layernorm", "post_attention_layernorm")),
                    *(f"layers.1.mlp.{p}.weight" for p in ("gate_proj", "up_proj", "down_proj"))}
    assert set(state["model"]) == trained_keys
    assert len(state["optimizer"]["state"]) == len(trained_keys)  # frozen tensors are not in the optimizer
    after = load_pretrained(str(tmp_path / "run")).model.state_dict()
    before = pre.model.state_dict()
    for name, tensor in before.items():
        if name in trained_keys:
            assert not torch.equal(after[name], tensor), name
        else:
            assert torch.equal(after[name], tensor), name


def test_a_frozen_run_resumes_exactly(env, tmp_path):
    pre = load_pretrained(env["run"])
    cfg = quiet_train(steps=4, trainable="lora", ckpt_every=2)
    train(pre.config, env["data"], cfg, tmp_path / "straight", init=pre)
    assert train(pre.config, env["data"], replace(cfg, stop_at=2), tmp_path / "resumed", init=pre)["status"] == "stopped"
    train(pre.config, env["data"], cfg, tmp_path / "resumed", init=pre, resume=True)
    a = ckpt.load(tmp_path / "straight" / "checkpoints" / "latest.pt")["model"]
    b = ckpt.load(tmp_path / "resumed" / "checkpoints" / "latest.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_changed_base_file_is_named(env, tmp_path):
    base = tmp_path / "base.pt"
    shutil.copy(env["pt"], base)
    pre = load_pretrained(str(base))
    train(pre.config, env["data"], quiet_train(trainable="attention"), tmp_path / "run", init=pre)
    load_pretrained(str(tmp_path / "run"))
    state = ckpt.load(base)
    state["model"] = {k: v + 1 for k, v in state["model"].items()}
    ckpt.atomic_save(state, base)
    with pytest.raises(ValueError, match="has changed"):
        load_pretrained(str(tmp_path / "run"))
    # a checkpoint naming itself as its base (crafted) is a named error, not endless recursion
    own = tmp_path / "run" / "checkpoints" / "latest.pt"
    state = ckpt.load(own)
    state["base"] = {"source": str(own), "fingerprint": state["base"]["fingerprint"]}
    ckpt.atomic_save(state, own)
    with pytest.raises(ValueError, match="has changed"):
        load_pretrained(str(own))


# ---------------------------------------------------------------------- LoRA
def test_lora_starts_at_the_base_model_trains_only_adapters_and_merges(env, tmp_path):
    pre = load_pretrained(env["run"])
    cfg = quiet_train(trainable="lora", lora={"rank": 4, "alpha": 8.0, "targets": ["q_proj", "v_proj", "down_proj"]})
    model, counts = build_model(pre.config, cfg, pre)
    x = torch.randint(0, 256, (2, 32))
    assert torch.equal(logits(model, x), logits(pre.model, x))  # B = 0: step 0 is the base model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"layers.{i}.{m}.{ab}" for i in (0, 1) for ab in ("lora_A", "lora_B")
                         for m in ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj")}
    assert counts["trainable"] == sum(p.numel() for n, p in model.named_parameters() if n in trainable)

    train(pre.config, env["data"], cfg, tmp_path / "run", init=pre)
    state = ckpt.load(tmp_path / "run" / "checkpoints" / "latest.pt")
    assert all(k.rsplit(".", 1)[1] in ("lora_A", "lora_B", "lora_scaling") for k in state["model"])
    # the adapted model after training (base weights + saved adapters), unmerged
    adapted, _ = build_model(pre.config, cfg, pre)
    adapted.load_state_dict(state["model"], strict=False)
    assert any(float(m.lora_B.detach().abs().max()) > 0 for m in adapted.modules() if isinstance(m, LoRALinear))
    for name, tensor in pre.model.state_dict().items():  # base weights untouched by training
        assert torch.equal(adapted.state_dict()[name], tensor), name
    merged = load_pretrained(str(tmp_path / "run")).model  # what the run dir loads as: merged
    assert not any(isinstance(m, LoRALinear) for m in merged.modules())
    out = logits(adapted, x)
    torch.testing.assert_close(logits(merged, x), out, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out, logits(pre.model, x))


def test_merge_lora_equals_the_adapted_model():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=50, d_model=40, n_layers=2, n_heads=4, n_kv_heads=2, context=24))
    added = apply_lora(model, ["q_proj", "k_proj", "o_proj", "gate_proj", "up_proj"], rank=3, alpha=5.0)
    assert len(added) == 10
    for m in model.modules():
        if isinstance(m, LoRALinear):
            torch.nn.init.normal_(m.lora_B, std=0.1)
    x = torch.randint(0, 50, (2, 24))
    adapted = logits(model, x)
    merged_state = merge_lora_state(model.state_dict())
    merge_lora(model)
    assert set(model.state_dict()) == set(merged_state)
    assert all(torch.allclose(model.state_dict()[k], merged_state[k], atol=1e-6) for k in merged_state)
    torch.testing.assert_close(logits(model, x), adapted, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="not projections"):
        apply_lora(model, ["qkv"], rank=2, alpha=1.0)


# ---------------------------------------------------------------------- config identity
def test_new_keys_at_their_defaults_keep_old_hashes():
    old = {"model": {"d_model": 32}, "train": {"lr": 0.1}, "data": {"context": 8}}
    new = {**old, "init": None, "train": {"lr": 0.1, "trainable": "all", "lora": {"rank": 8}}}
    assert config_hash(new) == config_hash(old)
    frozen = {**new, "train": {**new["train"], "trainable": "norms"}}
    assert config_hash(frozen) != config_hash(old)
    lora = {**new, "train": {**new["train"], "trainable": "lora"}}
    lora16 = {**new, "train": {**new["train"], "trainable": "lora", "lora": {"rank": 16}}}
    assert config_hash(lora) != config_hash(lora16)  # lora settings count when lora trains
    assert config_hash({**old, "init": "a", "init_fingerprint": "1"}) != config_hash({**old, "init": "a",
                                                                                     "init_fingerprint": "2"})


# ---------------------------------------------------------------------- bad input
def run_cli(args, env, run_dir, monkeypatch, capsys, job="train"):
    """``python -m attnlab.<job>`` in this process on the fixture's corpus; (exit code, stderr)."""
    files = {k: str(v) for k, v in env.items() if k != "data"}
    args = [a.format(**files) for a in args]
    data = env["data"]
    base = ["data=text", f"data.path={data.path}", "data.context=32", "data.batch_size=4", "data.val_tokens=256",
            "train.warmup_steps=1", "train.eval_every=0", "train.logger=jsonl", "train.progress=false",
            "train.device=cpu", f"data.cache_dir={data.cache_dir}"]
    monkeypatch.setattr(sys, "argv", [f"attnlab.{job}", *base, *args, f"hydra.run.dir={run_dir}", *HYDRA_QUIET])
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    if job == "train":
        from attnlab.train.__main__ import cli
    else:
        from attnlab.distill.__main__ import cli
    capsys.readouterr()
    try:
        code = cli()
    except SystemExit as exited:
        code = exited.code
    return code, capsys.readouterr().err


BAD = [
    (["init={run}", "model.d_model=64"], "model.d_model"),
    (["init={run}", "model=tiny", "model.n_heads=4"], "model=tiny, model.n_heads"),
    (["init={run}", "model.context=64"], "model.context=64 exceeds the 32 positions"),
    (["init={run}", "data.context=64"], "data.context=64 exceeds the model's context 32"),
    (["init={tmp}/nothing-here"], "init="),
    (["init={run}", "train.trainable=bogus"], "train.trainable='bogus'"),
    (["init={run}", "train.trainable=[all,norms]"], "train.trainable"),
    (["init={run}", "train.trainable=[layers.7.*]"], "matches no parameter"),
    (["init={run}", "train.trainable=lora", "train.lora.targets=[qkv]"], "train.lora.targets"),
    (["init={run}", "train.trainable=lora", "train.lora.rank=0"], "train.lora.rank=0"),
    (["train.trainable=[]"], "train.trainable"),
]


@pytest.mark.parametrize("args,key", BAD, ids=[b[1][:30] for b in BAD])
def test_bad_input_is_one_line_and_exit_2(env, tmp_path, monkeypatch, capsys, args, key):
    code, err = run_cli(args, env, tmp_path / "run", monkeypatch, capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (code, err[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: ") and key in lines[0], err[-2000:]
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_distill_refuses_freezing(env, tmp_path, monkeypatch, capsys):
    # conf/distill.yaml has no train.trainable (Hydra refuses it); added with +, the job refuses it
    code, err = run_cli(["teacher={run}", "+train.trainable=lora"], env, tmp_path / "run", monkeypatch, capsys,
                        job="distill")
    assert code == 2 and err.strip().startswith("error: train.trainable='lora'"), err[-2000:]
