"""SFT settings for ``lark-fast train``: a YAML file in the published trainer's key names, command-line
overrides, and their translation into ``TrainingArguments`` plus lark_fast's own settings."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

# published / common SFT key -> TrainingArguments field (any TrainingArguments field is also accepted by its name)
ALIASES = {
    "epochs": "num_train_epochs",
    "lr": "learning_rate",
    "batch_size": "per_device_train_batch_size",
    "micro_batch_size": "per_device_train_batch_size",
    "grad_accum": "gradient_accumulation_steps",
    "scheduler": "lr_scheduler_type",
    "lr_scheduler": "lr_scheduler_type",
    "gradient_checkpointing": "activation_checkpointing",
}
# a field older or newer transformers lack -> the one it has (warmup_steps < 1 is a ratio since transformers 5)
FALLBACK = {"activation_checkpointing": "gradient_checkpointing", "warmup_ratio": "warmup_steps"}
# lark_fast's settings (not TrainingArguments) with their defaults
OWN = {
    "max_length": None,            # truncate longer conversations (flagged); None: the model's context length
    "normalizer": "problems",      # docs/method.md §6.4
    "reduction": "mean",           # a trajectory's loss: its mean token nll ("sum": summed)
    "group_by_problem": True,      # an item is a problem (the batch size counts problems)
    "loss_backend": None,          # lark_fast.ops backend of the fused loss
    "chat_template": None,         # Jinja template file overriding the tokenizer's
    "lora": False,
    "lora_rank": 64,
    "lora_alpha": 128,
    "lora_dropout": 0.05,
    "lora_target_modules": "all-linear",  # every linear layer but the LM head: all projection matrices
    "fsdp": False,                 # FSDP2 through accelerate (CUDA only)
}
OWN_ALIASES = {"max_seq_length": "max_length", "cutoff_len": "max_length", "lora_r": "lora_rank",
               "lora_target": "lora_target_modules", "use_lora": "lora"}
# TrainingArguments defaults that differ for this command
DEFAULTS = {"report_to": "none", "logging_steps": 10, "save_strategy": "steps", "save_steps": 500}
# set by the command line only
COMMAND_LINE_ONLY = ("output_dir",)


def _fields() -> set:
    from transformers import TrainingArguments
    return {f.name for f in dataclasses.fields(TrainingArguments) if f.init}


def canonical(key: str, where: str) -> str:
    """The TrainingArguments field or lark_fast setting a settings key names; ValueError for an unknown one."""
    fields = _fields()
    key = OWN_ALIASES.get(key, key)
    if key in OWN:
        return key
    name = ALIASES.get(key, key)
    if name not in fields:
        name = FALLBACK.get(name, name)
    if name in COMMAND_LINE_ONLY:
        raise ValueError(f"{where}: {key!r} is set on the command line (--{name.replace('_', '-')})")
    if name in fields:
        return name
    raise ValueError(f"{where}: unknown key {key!r} (keys: TrainingArguments fields, {', '.join(sorted(ALIASES))}, "
                     f"{', '.join(sorted(set(OWN) | set(OWN_ALIASES)))})")


def read_config(path) -> dict:
    """The settings of a YAML file, keys made canonical; ValueError naming the file and the bad key."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({e})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    out: dict = {}
    for key, value in data.items():
        name = canonical(str(key), str(path))
        if key == "warmup_ratio" and not (isinstance(value, (int, float)) and 0 <= value < 1):
            raise ValueError(f"{path}: warmup_ratio: expected a number in [0, 1), got {value!r}")
        if name in out:
            raise ValueError(f"{path}: {key!r} sets {name!r} a second time")
        out[name] = value
    return out


def resolve(config: Optional[dict], overrides: dict) -> tuple:
    """``(training_arguments_kwargs, own_settings)`` from defaults, then the YAML's settings, then the
    command line's (``overrides``: canonical names, None = not given)."""
    merged = {**DEFAULTS, **OWN, **(config or {}), **{k: v for k, v in overrides.items() if v is not None}}
    own = {k: merged.pop(k) for k in OWN}
    return merged, own
