"""`python -m attnlab.export source=<model> out=<dir>`: a model as a Hugging Face Llama directory.

``source`` takes every source `python -m attnlab.eval` takes (a run dir of `attnlab.train` /
`attnlab.distill`, a checkpoint .pt, ``smollm2``, ``gguf:<path>``, ``hf:<dir>``). ``out`` gets
``config.json`` (LlamaConfig fields; ``attnlab_attention`` for a model whose attention is not
dense causal), ``model.safetensors`` and, where the tokenizer has a ``tokenizers`` form,
``tokenizer.json`` (`attnlab.pretrained.hf_dir` describes the directory). Then

    transformers.LlamaForCausalLM.from_pretrained(out)    # the same logits (dense models)
    Transformer.from_hf(out) / load_pretrained("hf:" + out)   # back into attnlab, specs included

``out`` must be new or empty; ``overwrite=true`` replaces a model directory exported before,
never anything else. ``dtype``: the weights' dtype (null: the model's).

Every option is checked before the model is loaded; bad input (an option, a source that does
not load, an ``out`` that may not be written, a spec without a JSON form) prints one line
``error: ...`` naming the key and exits with status 2.
"""

from __future__ import annotations

from pathlib import Path

from attnlab.errors import UserInputError, hydra_cli, user_errors
from attnlab.pretrained.sources import check_source_given, load_source

DTYPE_NAMES = ("float32", "bfloat16", "float16")


def check_options(source, out, overwrite, dtype) -> tuple[Path, object]:
    """Validate conf/export.yaml's keys before loading anything; returns (out as a Path, the
    torch dtype or None)."""
    from attnlab.pretrained.hf_dir import DTYPES, check_out_dir

    check_source_given("source", source)
    if out is None or (isinstance(out, str) and out.strip() in ("", "???")):
        raise UserInputError("out is not set: out=<a new or empty directory>")
    if not isinstance(out, str):
        raise UserInputError(f"out={out!r} is not allowed: a directory path")
    if dtype is not None and dtype not in DTYPE_NAMES:
        raise UserInputError(f"dtype={dtype!r} is not allowed: null (the model's), {', '.join(DTYPE_NAMES)}")
    path = Path(out).expanduser()
    check_out_dir(path, overwrite, key="out")
    return path, None if dtype is None else DTYPES[dtype]


def export(source: str, out: str, overwrite: bool = False, dtype: str | None = None) -> Path:
    """Load ``source`` and write it to ``out`` as a Hugging Face Llama directory; returns it.
    Bad input raises `UserInputError` naming the key (``source=``, ``out=``, ...)."""
    path, torch_dtype = check_options(source, out, overwrite, dtype)
    pre = load_source(source, "source")
    return _write(pre, path, overwrite, torch_dtype)


def _write(pre, path: Path, overwrite: bool, torch_dtype) -> Path:
    from attnlab.pretrained.hf_dir import HFDirError, save_hf

    try:
        return save_hf(pre.model, path, tokenizer=pre.tokenizer, overwrite=overwrite, dtype=torch_dtype)
    except HFDirError as err:
        text = str(err)
        raise UserInputError(text if text.startswith("out=") else f"source={pre.source!r}: {text}") from err


def main() -> None:
    import hydra
    from omegaconf import DictConfig, OmegaConf

    from attnlab.paths import CONF_DIR

    @hydra.main(config_path=str(CONF_DIR), config_name="export", version_base="1.3")
    def _main(cfg: DictConfig) -> None:
        with user_errors():  # bad options, unloadable sources, unwritable specs: one line, status 2
            c = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
            source = None if OmegaConf.is_missing(cfg, "source") else c["source"]
            out = None if OmegaConf.is_missing(cfg, "out") else c["out"]
            path, torch_dtype = check_options(source, out, c["overwrite"], c["dtype"])
            pre = load_source(source, "source")
            written = _write(pre, path, c["overwrite"], torch_dtype)
        tokenizer = "tokenizer.json" if (written / "tokenizer.json").is_file() else "no tokenizer (it has no tokenizers form)"
        print(f"wrote {written}: config.json, model.safetensors, {tokenizer}")

    hydra_cli(_main)()


if __name__ == "__main__":
    main()
