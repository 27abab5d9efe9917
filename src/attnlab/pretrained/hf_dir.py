"""Hugging Face Llama model directories in and out of attnlab's `Transformer`.

    save_hf(model, "out/hf", tokenizer=pre.tokenizer)   # what `python -m attnlab.export` writes
    loaded = load_hf("out/hf")                          # also Transformer.from_hf, load_pretrained("hf:out/hf")
    loaded.model, loaded.tokenizer

A directory holds
- ``config.json``: `transformers.LlamaConfig` fields (vocab_size, hidden_size,
  intermediate_size, num_hidden_layers, num_attention_heads, num_key_value_heads, head_dim,
  rope_theta and rope_parameters, rms_norm_eps, tie_word_embeddings, max_position_embeddings =
  the model's context) and two attnlab keys (transformers keeps unknown keys as config attributes):
  - ``attnlab_attention``: only for a model whose attention is not dense causal in every layer
    (a converted or sparse student): one dict of `AttentionSpec` keyword arguments per layer,
    e.g. ``{"kind": "sliding_window", "causal": true, "window": 64}``. `load_hf` rebuilds these
    specs; `attnlab.integrations.hf` runs them inside transformers (its eager / sdpa attention
    would compute a dense model instead). ``kind="custom"`` (a Python callable) and explicit
    block ``layout`` tensors have no JSON form: `save_hf` refuses them.
  - ``attnlab_tokenizer``: ``byte`` / ``bpe`` / ``gguf`` / ``hf``: what ``tokenizer.json`` holds
    (`attnlab.pretrained.hf_tokenizer`).
- ``model.safetensors``: the weights under HF names (``model.layers.0.self_attn.q_proj.weight``;
  ``lm_head.weight`` only when untied, as transformers writes it) and
  ``model.safetensors.sha256`` beside it, verified by `load_hf` when present.
- ``tokenizer.json`` + ``tokenizer_config.json`` where the tokenizer has a ``tokenizers`` form.

`load_hf` reads these and any local HF Llama directory (``model.safetensors``, or shards named
in ``model.safetensors.index.json``). Config values are checked against the GGUF loader's
limits, and every tensor's name, shape and dtype against the model the config describes,
before any weight is allocated; pickled ``pytorch_model.bin`` files are never read.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from attnlab.attention import AttentionSpec
from attnlab.data.cache import _umask, file_sha256, fsync_dir
from attnlab.errors import UserInputError
from attnlab.model import ModelConfig, Transformer, from_hf_name, rope_cache, to_hf_name
from attnlab.pretrained.gguf_file import (
    MAX_D_FF,
    MAX_D_MODEL,
    MAX_HEADS,
    MAX_LAYERS,
    MAX_VOCAB,
    rope_context,
)
from attnlab.pretrained.hf_tokenizer import read_tokenizer, tokenizer_files

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
CHECKSUM = WEIGHTS + ".sha256"
INDEX = "model.safetensors.index.json"
MAX_JSON_BYTES = 1 << 24  # config.json / the shard index: 16 MB is far beyond any real one
INSTALL_HINT = "pip install safetensors (or the attnlab[hf] extra)"
SPEC_KEYS = tuple(f.name for f in fields(AttentionSpec) if f.init and f.name not in ("layout", "mask_mod"))
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_FILE_DTYPES = {"F64", "F32", "F16", "BF16"}  # safetensors dtype names attnlab loads (converted to `dtype`)
_SHARD_NAME = re.compile(r"^[A-Za-z0-9_.-]+\.safetensors$")
_DENSE_CAUSAL = AttentionSpec(kind="dense", causal=True)


class HFDirError(UserInputError):
    """A model directory attnlab cannot read or write; the message names it and the field."""


def _safe_open():
    try:
        from safetensors import safe_open
    except ModuleNotFoundError:
        raise ModuleNotFoundError(f"Hugging Face model directories need the PyPI package safetensors: "
                                  f"{INSTALL_HINT}") from None
    return safe_open


# ---------------------------------------------------------------------- attention specs <-> JSON
def spec_to_json(spec: AttentionSpec, where: str = "") -> dict:
    """``spec`` as JSON-able `AttentionSpec` kwargs (kind and causal always, other fields
    when not default). `HFDirError` for kind="custom", explicit layouts and NSA layers."""
    if spec.kind == "nsa":
        raise HFDirError(f"{where}{spec.name}: NSA layers have compression and gate weights that a Llama "
                         "checkpoint has no place for; they cannot be exported as Hugging Face Llama")
    if spec.kind == "custom":
        raise HFDirError(f"{where}{spec.name}: kind='custom' (a Python mask_mod) cannot be written to config.json; "
                         "export a model whose attention is dense, sliding_window or a block_sparse pattern")
    if spec.layout is not None:
        raise HFDirError(f"{where}{spec.name}: an explicit block layout tensor cannot be written to config.json; "
                         "use a block_sparse pattern (local, strided, bigbird, longformer, random)")
    default = AttentionSpec()
    out = {}
    for name in SPEC_KEYS:
        value = getattr(spec, name)
        if name in ("kind", "causal") or value != getattr(default, name):
            out[name] = list(value) if isinstance(value, tuple) else value
    return out


def spec_from_json(entry, where: str) -> AttentionSpec:
    """The `AttentionSpec` of one ``attnlab_attention`` entry (causal: a causal LM's layer)."""
    if not isinstance(entry, dict):
        raise HFDirError(f"{where}={entry!r} must be a dict of AttentionSpec arguments")
    unknown = sorted(set(entry) - set(SPEC_KEYS))
    if unknown:
        raise HFDirError(f"{where} has unknown keys {unknown}; allowed: {', '.join(SPEC_KEYS)}")
    kwargs = {"causal": True, **entry}
    if kwargs["causal"] is not True:
        raise HFDirError(f"{where}.causal={kwargs['causal']!r}: a LlamaForCausalLM layer is causal (true)")
    try:
        return AttentionSpec(**kwargs)
    except (TypeError, ValueError) as err:
        raise HFDirError(f"{where}: {err}") from None


# ---------------------------------------------------------------------- config.json
def hf_config(cfg: ModelConfig, dtype: torch.dtype) -> dict:
    """config.json of ``cfg`` (see the module docstring)."""
    if cfg.objective != "causal":
        raise HFDirError(f"model.objective={cfg.objective!r}: a Hugging Face LlamaForCausalLM is a causal LM; "
                         "only causal models can be exported")
    specs = cfg.layer_specs()
    attention = [spec_to_json(spec, f"layer {i}: ") for i, spec in enumerate(specs)]
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.ffn_dim,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.context,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_base,  # transformers < 5
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_base},  # transformers >= 5
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "tie_word_embeddings": cfg.tie_embeddings,
        "initializer_range": 0.02,
        "use_cache": True,
        "torch_dtype": _dtype_name(dtype),
        "bos_token_id": None,  # set from the tokenizer when it names them
        "eos_token_id": None,
    }
    if any(spec != _DENSE_CAUSAL for spec in specs):
        config["attnlab_attention"] = attention
    return config


def _dtype_name(dtype: torch.dtype) -> str:
    for name, value in DTYPES.items():
        if value == dtype:
            return name
    raise HFDirError(f"dtype={dtype}: allowed {', '.join(DTYPES)}")


def read_config(folder: Path) -> dict:
    """config.json of ``folder`` as a dict (size-bounded)."""
    if not folder.is_dir():
        raise HFDirError(f"{folder}: not a directory (a Hugging Face model directory holds config.json and "
                         "model.safetensors)")
    return _read_json(folder / CONFIG, "a Hugging Face model directory holds config.json and model.safetensors")


def _read_json(path: Path, hint: str) -> dict:
    if not path.is_file():
        raise HFDirError(f"{path.parent}: no {path.name}; {hint}")
    size = path.stat().st_size
    if size > MAX_JSON_BYTES:
        raise HFDirError(f"{path}: {size:,} bytes, over the limit of {MAX_JSON_BYTES:,}")
    try:
        data = json.loads(path.read_bytes())
    except (UnicodeDecodeError, ValueError) as err:
        raise HFDirError(f"{path}: not JSON ({err})") from None
    if not isinstance(data, dict):
        raise HFDirError(f"{path}: not a JSON object")
    return data


_MISSING = object()


def _get(raw: dict, key: str, where, kind=int, lo=None, hi=None, default=_MISSING):
    """``raw[key]`` (null or absent: ``default``) checked: its type and range."""
    value = raw.get(key)
    if value is None:
        if default is _MISSING:
            raise HFDirError(f"{where}: config.json lacks {key!r}")
        return default
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and abs(value) < float("inf")
    if not ok:
        raise HFDirError(f"{where}: {key}={value!r} is not {'true or false' if kind is bool else kind.__name__}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise HFDirError(f"{where}: {key}={value!r} is outside [{lo}, {hi}]")
    return kind(value)


def _rope_theta(raw: dict, where) -> float:
    for key in ("rope_parameters", "rope_scaling"):
        params = raw.get(key)
        if params is None:
            continue
        if not isinstance(params, dict):
            raise HFDirError(f"{where}: {key}={params!r} is not a dict")
        rope_type = params.get("rope_type", params.get("type", "default"))
        if rope_type != "default":
            raise HFDirError(f"{where}: {key}.rope_type={rope_type!r}: RoPE scaling (llama3, linear, dynamic, yarn, "
                             "...) is not in attnlab's RoPE; only 'default'")
    params = raw.get("rope_parameters") if isinstance(raw.get("rope_parameters"), dict) else {}
    source = params if params.get("rope_theta") is not None else raw
    return _get(source, "rope_theta", where, float, 1e-6, 1e12, default=10000.0)


def hf_model_config(raw: dict, where, context: int | None = None, needed_context: int | None = None,
                    attn_impl: str = "auto") -> ModelConfig:
    """Our `ModelConfig` for a config.json, every field checked (`HFDirError` naming ``where`` and
    the field). Context (RoPE tables): ``context`` when given, else ``min(max_position_embeddings,
    max(needed_context, 8192))``, as for GGUF files."""
    if raw.get("model_type") != "llama":
        raise HFDirError(f"{where}: model_type={raw.get('model_type')!r}; attnlab reads Llama models ('llama')")
    arch = raw.get("architectures")
    if arch is not None and (not isinstance(arch, list) or "LlamaForCausalLM" not in arch):
        raise HFDirError(f"{where}: architectures={arch!r}; attnlab reads LlamaForCausalLM")
    n_layers = _get(raw, "num_hidden_layers", where, int, 1, MAX_LAYERS)
    d_model = _get(raw, "hidden_size", where, int, 1, MAX_D_MODEL)
    n_heads = _get(raw, "num_attention_heads", where, int, 1, MAX_HEADS)
    n_kv = _get(raw, "num_key_value_heads", where, int, 1, n_heads, default=n_heads)
    d_ff = _get(raw, "intermediate_size", where, int, 1, MAX_D_FF)
    vocab = _get(raw, "vocab_size", where, int, 1, MAX_VOCAB)
    max_pos = _get(raw, "max_position_embeddings", where, int, 1, None, default=2048)
    eps = _get(raw, "rms_norm_eps", where, float, 0.0, 1.0, default=1e-6)
    tie = _get(raw, "tie_word_embeddings", where, bool, default=False)
    if d_model % n_heads or (d_model // n_heads) % 2:
        raise HFDirError(f"{where}: hidden_size={d_model} is not num_attention_heads={n_heads} heads of an even size")
    head_dim = _get(raw, "head_dim", where, int, 1, None, default=d_model // n_heads)
    if head_dim != d_model // n_heads:
        raise HFDirError(f"{where}: head_dim={head_dim} != hidden_size / num_attention_heads = {d_model // n_heads}; "
                         "attnlab's Transformer has no separate head_dim")
    if n_heads % n_kv:
        raise HFDirError(f"{where}: num_key_value_heads={n_kv} does not divide num_attention_heads={n_heads}")
    act = raw.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise HFDirError(f"{where}: hidden_act={act!r}; attnlab's MLP is SwiGLU ('silu')")
    for key in ("attention_bias", "mlp_bias"):
        if _get(raw, key, where, bool, default=False):
            raise HFDirError(f"{where}: {key}=true; attnlab's Llama has no biases")
    rope_base = _rope_theta(raw, where)
    context = rope_context(max_pos, context, needed_context)
    attention, pattern = _layer_attention(raw.get("attnlab_attention"), n_layers, where)
    try:
        return ModelConfig(vocab_size=vocab, d_model=d_model, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv,
                           d_ff=d_ff, context=context, rope_base=rope_base, norm_eps=eps, tie_embeddings=tie,
                           attn_impl=attn_impl, attention=attention, layer_pattern=pattern)
    except ValueError as err:
        raise HFDirError(f"{where}: {err}") from None


def _layer_attention(entries, n_layers: int, where) -> tuple[dict[str, dict], list[str]]:
    """``attnlab_attention`` -> (`ModelConfig.attention`, ``layer_pattern``): one name per
    distinct spec (its kind, numbered when kinds repeat)."""
    if entries is None:
        return {"dense": {"kind": "dense"}}, ["dense"]
    if not isinstance(entries, list) or len(entries) != n_layers:
        shown = f"{len(entries)} entries" if isinstance(entries, list) else repr(entries)[:80]
        raise HFDirError(f"{where}: attnlab_attention must list one spec per layer ({n_layers}), got {shown}")
    attention: dict[str, dict] = {}
    specs: dict[str, AttentionSpec] = {}
    pattern = []
    for i, entry in enumerate(entries):
        spec = spec_from_json(entry, f"{where}: attnlab_attention[{i}]")
        name = next((n for n, s in specs.items() if s == spec), None)
        if name is None:
            name = spec.kind if spec.kind not in attention else f"{spec.kind}_{len(attention)}"
            specs[name] = spec
            attention[name] = {k: v for k, v in entry.items() if k != "causal"}
        pattern.append(name)
    return attention, pattern


# ---------------------------------------------------------------------- writing
def check_out_dir(out: Path, overwrite: bool, key: str = "out") -> None:
    """``out`` may be written: new, empty, or (``overwrite``) a model directory written before.
    A directory holding anything else (an attnlab run, other files) is never replaced."""
    if not isinstance(overwrite, bool):
        raise HFDirError(f"overwrite={overwrite!r} is not allowed: true or false")
    if out.exists() and not out.is_dir():
        raise HFDirError(f"{key}={str(out)!r} is a file; give a new or empty directory")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not overwrite:
        raise HFDirError(f"{key}={str(out)!r} is not empty; give a new or empty directory, or overwrite=true to "
                         "replace a model directory exported before")
    if (out / "checkpoints").exists() or not (out / CONFIG).is_file() or not _weights_present(out):
        raise HFDirError(f"{key}={str(out)!r} is not a Hugging Face model directory (config.json + "
                         "model.safetensors); overwrite=true replaces only such a directory, never other files")


def _weights_present(folder: Path) -> bool:
    return (folder / WEIGHTS).is_file() or (folder / INDEX).is_file()


def save_hf(model: Transformer, out: str | os.PathLike, tokenizer=None, overwrite: bool = False,
            dtype: torch.dtype | None = None) -> Path:
    """Write ``model`` (and ``tokenizer`` when it has a ``tokenizers`` form) as a Hugging Face
    Llama directory ``out`` (module docstring); ``dtype``: the weights' (default: the model's).
    All or nothing: the files are written to a temporary directory beside ``out`` and renamed.
    ``out`` must be new or empty, or with ``overwrite`` a model directory written before."""
    out = Path(out)
    check_out_dir(out, overwrite)
    cfg = model.config
    dtype = dtype or next(model.parameters()).dtype
    config = hf_config(cfg, dtype)
    tok = tokenizer_files(tokenizer, cfg.context) if tokenizer is not None else None
    files: dict[str, str] = {}
    if tok is not None:
        kind, files, special = tok
        config["attnlab_tokenizer"] = kind
        config.update(special)
    state = {}
    for name, tensor in model.state_dict().items():
        if cfg.tie_embeddings and name == "lm_head.weight":
            continue  # tied: transformers ties it from config.json, as it writes it
        state[to_hf_name(name)] = tensor.detach().to("cpu", dtype).contiguous()
    _safe_open()  # a missing safetensors fails here, before anything is written
    from safetensors.torch import save_file

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        save_file(state, tmp / WEIGHTS, metadata={"format": "pt"})
        os.chmod(tmp / WEIGHTS, 0o666 & ~_umask())  # safetensors writes 0600; give what open() would
        files = {CONFIG: json.dumps(config, indent=2) + "\n", CHECKSUM: file_sha256(tmp / WEIGHTS) + "\n", **files}
        for name, text in files.items():
            (tmp / name).write_text(text, encoding="utf-8")
        for path in tmp.iterdir():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(tmp)
        _move_into_place(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _move_into_place(tmp: Path, out: Path, overwrite: bool) -> None:
    check_out_dir(out, overwrite)  # again: the directory may have changed while we wrote
    if out.is_dir() and any(out.iterdir()):
        old = out.with_name(f".{out.name}.replaced-{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old)
    else:
        if out.is_dir():
            out.rmdir()
        os.replace(tmp, out)
    fsync_dir(out.parent)


# ---------------------------------------------------------------------- reading
@dataclass
class LoadedHF:
    """What `load_hf` returns. ``tokenizer``: None when the directory has none.
    ``fingerprint``: a hash of config.json and the weights (for cache keys)."""

    model: Transformer
    tokenizer: object
    fingerprint: str
    raw_config: dict


def _weight_files(folder: Path) -> list[Path]:
    if (folder / WEIGHTS).is_file():
        return [folder / WEIGHTS]
    if (folder / INDEX).is_file():
        index = _read_json(folder / INDEX, "")
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise HFDirError(f"{folder / INDEX}: no weight_map")
        names = sorted({str(v) for v in weight_map.values()})
        bad = [n for n in names if not _SHARD_NAME.match(n)]
        if bad:
            raise HFDirError(f"{folder / INDEX}: shard {bad[0]!r} is not a .safetensors file name in the directory")
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise HFDirError(f"{folder}: shard {missing[0]!r} named in {INDEX} does not exist")
        return [folder / n for n in names]
    found = "pytorch_model.bin (a pickle, never loaded: convert it to safetensors)" if (
        folder / "pytorch_model.bin").exists() else "neither"
    raise HFDirError(f"{folder}: no {WEIGHTS} or {INDEX} ({found})")


def _verify_checksum(folder: Path, files: list[Path]) -> dict[Path, str]:
    """sha256 of every weights file; the sidecar ``model.safetensors.sha256`` (written by
    `save_hf`) must match when present."""
    sums = {path: file_sha256(path) for path in files}
    sidecar = folder / CHECKSUM
    if sidecar.is_file() and files == [folder / WEIGHTS]:
        recorded = sidecar.read_text(encoding="utf-8", errors="replace").strip()
        if recorded != sums[files[0]]:
            raise HFDirError(f"{files[0]}: checksum mismatch with {CHECKSUM} (the file was changed or damaged)")
    return sums


def _tensor_table(files: list[Path], expected: dict[str, tuple[int, ...]], tie: bool) -> dict[str, tuple[Path, str]]:
    """``{our name: (file, HF name)}`` after checking every tensor's name, shape and dtype."""
    safe_open = _safe_open()
    table: dict[str, tuple[Path, str]] = {}
    for path in files:
        try:
            with safe_open(path, framework="pt") as f:
                for hf_name in f.keys():
                    if hf_name.endswith("rotary_emb.inv_freq"):
                        continue  # old transformers saved the RoPE table; ours is rebuilt
                    ours = from_hf_name(hf_name)
                    if ours == "lm_head.weight" and tie:
                        continue  # tie_word_embeddings: transformers ignores it too
                    if ours not in expected:
                        raise HFDirError(f"{path}: tensor {hf_name!r} does not belong to the LlamaForCausalLM "
                                         "config.json describes")
                    if ours in table:
                        raise HFDirError(f"{path}: tensor {hf_name!r} appears twice")
                    info = f.get_slice(hf_name)
                    shape, dtype = tuple(info.get_shape()), info.get_dtype()
                    if shape != expected[ours]:
                        raise HFDirError(f"{path}: tensor {hf_name!r} has shape {list(shape)}, config.json needs "
                                         f"{list(expected[ours])}")
                    if dtype not in _FILE_DTYPES:
                        raise HFDirError(f"{path}: tensor {hf_name!r} has dtype {dtype}; allowed: "
                                         f"{', '.join(sorted(_FILE_DTYPES))}")
                    table[ours] = (path, hf_name)
        except HFDirError:
            raise
        except Exception as err:  # safetensors' own error on a malformed header
            raise HFDirError(f"{path}: not a readable safetensors file ({type(err).__name__}: "
                             f"{str(err).splitlines()[0] if str(err) else ''})") from None
    needed = set(expected) - ({"lm_head.weight"} if tie else set())
    missing = sorted(needed - set(table))
    if missing:
        raise HFDirError(f"{files[0].parent}: tensor {to_hf_name(missing[0])!r} is missing"
                         + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    return table


def load_hf(path: str | os.PathLike, attn_impl: str = "auto", context: int | None = None,
            needed_context: int | None = None, dtype: torch.dtype = torch.float32) -> LoadedHF:
    """Read a Hugging Face Llama directory (module docstring): the model on the CPU in eval
    mode with the directory's per-layer attention (``attnlab_attention``, else dense causal),
    weights converted to ``dtype``; its tokenizer when it has one."""
    folder = Path(path).expanduser()
    raw = read_config(folder)
    where = str(folder)
    cfg = hf_model_config(raw, where, context=context, needed_context=needed_context, attn_impl=attn_impl)
    kind = raw.get("attnlab_tokenizer")
    special = {k: raw[k] for k in ("bos_token_id", "eos_token_id") if isinstance(raw.get(k), int)}
    tokenizer = read_tokenizer(folder, kind if isinstance(kind, str) else None, special)
    if tokenizer is not None and tokenizer.vocab_size > cfg.vocab_size:
        raise HFDirError(f"{where}: the tokenizer has {tokenizer.vocab_size} tokens but the model only "
                         f"vocab_size={cfg.vocab_size} logits")
    files = _weight_files(folder)
    with torch.device("meta"):
        model = Transformer(cfg)  # shapes only: the weights come from the files
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    table = _tensor_table(files, expected, cfg.tie_embeddings)
    sums = _verify_checksum(folder, files)
    safe_open = _safe_open()
    state = {}
    for file in files:
        with safe_open(file, framework="pt") as f:
            for ours, (where_file, hf_name) in table.items():
                if where_file == file:
                    state[ours] = f.get_tensor(hf_name).to(dtype)
    if cfg.tie_embeddings:
        state["lm_head.weight"] = state["embed_tokens.weight"]
    model.load_state_dict(state, assign=True, strict=True)
    if cfg.tie_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    model.rope_cos, model.rope_sin = rope_cache(cfg.context, cfg.head_dim, cfg.rope_base)
    model = model.to(dtype).eval()
    digest = hashlib.sha256(json.dumps(raw, sort_keys=True).encode())
    for file in files:
        digest.update(sums[file].encode())
    return LoadedHF(model, tokenizer, digest.hexdigest()[:16], raw)
