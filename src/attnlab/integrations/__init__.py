"""attnlab inside other libraries: `attnlab.integrations.hf` runs attnlab's `attention()`
(every kind and impl) inside Hugging Face transformers models. Each integration imports its
library lazily: attnlab itself never needs it."""
