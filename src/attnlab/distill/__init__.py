"""Teacher-student distillation: losses, student initialization, offline teacher logits, the job.

```python
from attnlab.distill import distillation_loss, forward_kl, generalized_jsd, TopK

out = distillation_loss(student_logits, teacher_logits, targets, kind="forward_kl",
                        temperature=2.0, weight_hard=0.5, weight_soft=0.5)   # {"loss", "soft", "hard"}
out["loss"].backward()
```

- `attnlab.distill.losses`: forward / reverse KL, generalized JSD(beta), hard-label mixing,
  top-k teacher logits, hidden-state MSE / cosine (with learned projections).
- `attnlab.distill.student`: layer maps, init from a teacher, attention transfer.
- `attnlab.distill.cache`: a teacher's top-k logits of the train batches on disk.
- `attnlab.distill.trainer.distill`: the job; `python -m attnlab.distill` its Hydra entry
  (conf/distill.yaml) and `python -m attnlab.distill.report <dir>` its table.
"""

from attnlab.distill.cache import TopKCache
from attnlab.distill.config import DistillConfig
from attnlab.distill.losses import (
    HiddenStateLoss,
    TopK,
    distillation_loss,
    forward_kl,
    generalized_jsd,
    hard_loss,
    hidden_state_loss,
    reverse_kl,
    soft_loss,
)
from attnlab.distill.student import capture_hidden, init_from_teacher, layer_map, transfer_config
from attnlab.distill.trainer import check_vocab, distill

__all__ = [
    "DistillConfig",
    "HiddenStateLoss",
    "TopK",
    "TopKCache",
    "capture_hidden",
    "check_vocab",
    "distill",
    "distillation_loss",
    "forward_kl",
    "generalized_jsd",
    "hard_loss",
    "hidden_state_loss",
    "init_from_teacher",
    "layer_map",
    "reverse_kl",
    "soft_loss",
    "transfer_config",
]
