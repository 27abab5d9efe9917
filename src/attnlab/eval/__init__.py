"""`python -m attnlab.eval`: evaluate any model (SmolLM2, a GGUF file, an attnlab run or
checkpoint) on a list of tasks, one JSON record with a section per task.

    python -m attnlab.eval source=smollm2 data.context=512 windows=16                # val bits per byte
    python -m attnlab.eval source=outputs/train/<run> tasks=[bpb,bpb_by_position] out_dir=<folder>
    python -m attnlab.eval source=smollm2 tasks=[passkey] passkey.distances=[64,256,1024] passkey.samples=4
    python -m attnlab.eval source=outputs/train/<copy run> tasks=[copy] task.distances=[8,16,128]
    python -m attnlab.eval source=outputs/train/<run> +attention=swa32               # with another attention

``source``: smollm2, gguf:<path>, a run dir of `python -m attnlab.train` / `attnlab.distill`,
or a checkpoint .pt. ``tasks`` (default ``[bpb]``):

- ``bpb``: val bits per byte on the first ``windows`` fixed validation windows of
  ``data.context`` tokens of the corpus (``data``), tokenized with the model's own tokenizer
  (`attnlab.eval.bpb`);
- ``bpb_by_position``: the same windows' bits per byte at each token position, and in
  power-of-two buckets of positions: how much context the model uses (`attnlab.eval.bpb`);
- ``passkey``: zero-shot passkey retrieval in the model's tokens, exact match by distance
  (``passkey.*``; `attnlab.eval.passkey`); on a run trained with ``data=passkey``, that
  task's own validation set instead (``task.*`` overrides);
- ``copy`` / ``mqar``: a run trained on that recall task, on its validation set with the
  run's data config and the non-null ``task.*`` overrides (`attnlab.eval.recall`).

Output: the record is printed, written to ``out=<file>``, and with ``out_dir=<folder>`` as
``eval.json`` beside ``bpb_by_position.png`` / ``passkey.png`` / ``copy.png`` / ``mqar.png``.
Bad options print one line ``error: ...`` naming the key and exit with status 2.
"""

from attnlab.eval.bpb import (
    bpb_by_position,
    evaluate_bpb,
    position_curve,
    position_losses,
    with_attention,
)
from attnlab.eval.passkey import build_prompts, passkey_zero_shot, score_prompts
from attnlab.eval.recall import evaluate_recall, task_config
from attnlab.eval.run import TASKS, execute, make_plan

__all__ = [
    "TASKS",
    "bpb_by_position",
    "build_prompts",
    "evaluate_bpb",
    "evaluate_recall",
    "execute",
    "make_plan",
    "passkey_zero_shot",
    "position_curve",
    "position_losses",
    "score_prompts",
    "task_config",
    "with_attention",
]
