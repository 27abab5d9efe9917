"""`attnlab.eval.make_plan`: every bad option or task that does not fit the source fails before
any forward pass with a ValueError naming the key and value (the CLI's one-line errors)."""

import pytest

from attnlab.data import ByteTokenizer
from attnlab.data.passkey import PasskeyConfig
from attnlab.data.recall import CopyConfig, TaskTokens
from attnlab.eval import make_plan
from attnlab.model import ModelConfig, Transformer
from attnlab.pretrained import Pretrained

PASSKEY = {"distances": [60], "samples": 1, "digits": 5, "seed": 0, "context": None}


def loader(data=None, context=64, objective="causal"):
    vocab = 32 if isinstance(data, CopyConfig) else 256
    cfg = ModelConfig(vocab_size=vocab, d_model=16, n_layers=1, n_heads=2, context=context, objective=objective)
    tok = TaskTokens(vocab, data.name) if isinstance(data, CopyConfig) else ByteTokenizer()

    def load(source, **_):
        return Pretrained(Transformer(cfg).eval(), cfg, tok, source, "attnlab", "test", data)

    return load


def options(tmp_path, **kw):
    return {"source": "run", "tasks": ["bpb"], "windows": 2, "batch_size": 1, "device": "cpu",
            "data": {"context": 32, "val_tokens": 256, "cache_dir": str(tmp_path)}, "passkey": dict(PASSKEY),
            "task": {"distances": None}, **kw}


@pytest.mark.parametrize("kw,load,message", [
    ({"source": None}, loader(), "source is not set"),
    ({"tasks": []}, loader(), "tasks=[] is not allowed"),
    ({"tasks": ["bpb", "bpb"]}, loader(), "listed twice"),
    ({"windows": -1}, loader(), "windows=-1"),
    ({"batch_size": True}, loader(), "batch_size=True"),
    ({"passkey": {**PASSKEY, "depth": 0.5}, "tasks": ["passkey"]}, loader(), "passkey.depth: unknown key"),
    ({"passkey": {**PASSKEY, "samples": 0}, "tasks": ["passkey"]}, loader(), "passkey.samples=0"),
    ({"tasks": ["passkey"]}, loader(context=64), "do not fit the model's context of 64"),
    ({"tasks": ["copy"]}, loader(), "tasks=copy: source=run was trained on text"),
    ({"tasks": ["mqar"]}, loader(CopyConfig(context=64)), "data.name='copy', not on data=mqar"),
    ({"tasks": ["passkey"]}, loader(CopyConfig(context=64)), "data.name='copy', not on data=passkey"),
    ({"tasks": ["bpb_by_position"]}, loader(CopyConfig(context=64)), "tasks=bpb_by_position does not fit"),
    ({"tasks": ["copy"], "task": {"num_pairs": 4}}, loader(CopyConfig(context=64)),
     "task.num_pairs=4: not a field of data=copy"),
    ({"tasks": ["copy"], "task": {"distances": [0]}}, loader(CopyConfig(context=64)), "task.distances=[0] is not"),
    ({"tasks": ["copy"], "task": {"context": 128}}, loader(CopyConfig(context=64)),
     "task.context=128 exceeds the model's context=64"),
    ({"tasks": ["passkey"], "task": {"digits": 50}}, loader(PasskeyConfig(context=96, distances=(60,)), 96),
     "task.digits=50"),
    ({"data": {"context": 128, "val_tokens": 256}}, loader(), "data.context=128 exceeds the model's context=64"),
    ({"tasks": ["bpb_by_position"]}, loader(objective="mlm"), "model.objective='mlm'"),
    ({"model": {"d_model": 8}}, loader(), "model.d_model cannot be changed"),
])
def test_bad_options_fail_before_any_forward_pass(kw, load, message, tmp_path):
    with pytest.raises(ValueError) as err:
        make_plan(options(tmp_path, **kw), load=load)
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_a_good_plan_lists_its_tasks(tmp_path):
    plan = make_plan(options(tmp_path, tasks=["bpb", "bpb_by_position"]), load=loader())
    assert [name for name, _ in plan.jobs] == ["bpb", "bpb_by_position"]
    plan = make_plan(options(tmp_path, tasks=["passkey"]), load=loader(PasskeyConfig(context=96, distances=(60,)),
                                                                        96))
    assert [name for name, _ in plan.jobs] == ["passkey"]
