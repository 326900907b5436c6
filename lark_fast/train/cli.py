"""``lark-fast train``: weighted SFT of a student on ``lark-fast select``'s training set (docs/method.md §6)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

# flags that override the YAML's settings (argparse dests; config.canonical names them)
OVERRIDES = ("learning_rate", "epochs", "max_steps", "per_device_train_batch_size", "gradient_accumulation_steps",
             "max_length", "lr_scheduler_type", "warmup_ratio", "warmup_steps", "logging_steps", "save_steps", "bf16",
             "gradient_checkpointing", "seed", "normalizer", "chat_template", "lora", "lora_rank", "lora_alpha",
             "lora_dropout", "lora_target_modules", "deepspeed", "fsdp")


def normalizer(value: str):
    """--normalizer: "problems" or a positive number."""
    return value if value == "problems" else float(value)


def ratio(value: str) -> float:
    """--warmup-ratio: a number in [0, 1)."""
    r = float(value)
    if not 0 <= r < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {value}")
    return r


def add_lora(model, own: dict):
    """The model with LoRA adapters (peft) on ``own["lora_target_modules"]``; only the adapters train."""
    try:
        import peft
    except ImportError:
        raise ValueError("lora: LoRA needs peft, which is not installed: pip install 'lark_fast[lora]'") from None
    targets = own["lora_target_modules"]
    if isinstance(targets, str) and targets != "all-linear":
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    cfg = peft.LoraConfig(r=int(own["lora_rank"]), lora_alpha=float(own["lora_alpha"]),
                          lora_dropout=float(own["lora_dropout"]), target_modules=targets, task_type="CAUSAL_LM")
    return peft.get_peft_model(model, cfg)


def training_arguments(ta: dict, own: dict, output_dir):
    """``TrainingArguments`` from the resolved settings; created before the model loads (ZeRO-3 partitions
    the weights while they load)."""
    import torch
    from transformers import TrainingArguments

    ta = {**ta, "output_dir": str(output_dir)}
    if own["fsdp"]:
        if not torch.cuda.is_available():
            raise ValueError("fsdp: FSDP2 runs on CUDA devices only (on CPU accelerate would silently fall back to "
                             "DDP); leave out --fsdp, or use --deepspeed")
        if ta.get("deepspeed"):
            raise ValueError("fsdp / deepspeed: choose one")
        fsdp_config = {"version": 2, **(ta.get("fsdp_config") or {})}
        for name in ("activation_checkpointing", "gradient_checkpointing"):  # FSDP's own checkpointing instead
            if ta.pop(name, False):
                fsdp_config["activation_checkpointing"] = True
        ta.update(fsdp=True, fsdp_config=fsdp_config)
    try:
        return TrainingArguments(**ta)
    except (TypeError, ValueError) as e:
        raise ValueError(f"settings: {e}") from None


def cmd_train(args) -> int:
    from transformers import AutoModelForCausalLM, set_seed

    from ..models import context_length, load_tokenizer, local_directory
    from .collator import PackedCollator
    from .config import canonical, read_config, resolve
    from .data import WeightedSFTDataset
    from .trainer import WeightedSFTTrainer

    config = read_config(args.config) if args.config else {}
    overrides: dict = {}
    for flag in OVERRIDES:
        name, value = canonical(flag, "--" + flag.replace("_", "-")), getattr(args, flag)
        if value is not None and overrides.get(name) is not None:
            raise ValueError(f"--{flag.replace('_', '-')}: sets {name!r}, which another flag sets too")
        overrides[name] = overrides.get(name) if value is None else value
    ta, own = resolve(config, overrides)
    targs = training_arguments(ta, own, args.output_dir)
    directory = local_directory(args.model)
    tokenizer = load_tokenizer(directory)
    model = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True)
    template = Path(own["chat_template"]).read_text(encoding="utf-8") if own["chat_template"] else None
    dataset = WeightedSFTDataset(args.train_data, tokenizer, max_length=own["max_length"] or context_length(model),
                                 group_by_problem=bool(own["group_by_problem"]), chat_template=template)
    if own["lora"]:
        set_seed(targs.seed)  # the adapters' random initialisation, whatever loading the model drew
        model = add_lora(model, own)
    trainer = WeightedSFTTrainer(model=model, args=targs, train_dataset=dataset,
                                 data_collator=PackedCollator(own["reduction"]), normalizer=own["normalizer"],
                                 loss_backend=own["loss_backend"])
    result = trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    trainer.save_model()  # the LoRA adapters alone with --lora
    trainer.save_state()  # trainer_state.json: log_history with the loss of every logging step
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(args.output_dir)
        settings = {"model": str(args.model), "train_data": str(args.train_data), "config": args.config,
                    "training_arguments": ta, "lark_fast": own,
                    "trajectories": len(dataset.keys), "problems": len(dataset.problem_ids),
                    "truncated": dataset.n_truncated, "skipped": dataset.skipped,
                    "global_step": result.global_step, "train_loss": result.training_loss}
        (Path(args.output_dir) / "lark_train.json").write_text(json.dumps(settings, indent=1, default=str) + "\n")
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        print(f"{result.global_step} optimizer steps on {len(dataset.problem_ids)} problems "
              f"({len(dataset.keys)} trajectories, {dataset.n_truncated} truncated, {len(dataset.skipped)} skipped)"
              + (f"; loss {losses[0]:.4g} -> {losses[-1]:.4g}" if losses else "") + f"; wrote {args.output_dir}")
    return 0


def add_parser(sub) -> None:
    """Registers ``train`` on the top-level subparsers."""
    s = sub.add_parser("train", help="weighted SFT of the student on a training set (lark-fast select's output)",
                       description="Weighted SFT with the fixed-normaliser objective (docs/method.md §6). Settings: "
                                   "defaults < --config YAML < flags. Distributed: launch with torchrun.")
    s.add_argument("--train-data", required=True, help="training set (.jsonl/.parquet, published schema)")
    s.add_argument("--model", required=True, help="student: model directory, .gguf file, or installed package")
    s.add_argument("--output-dir", required=True, help="checkpoints, the final model (or LoRA adapters), "
                                                        "trainer_state.json and lark_train.json")
    s.add_argument("--config", default=None, help="YAML of SFT settings: TrainingArguments fields and the "
                                                   "published names (epochs, max_length, lora_r, ...; README)")
    s.add_argument("--resume-from-checkpoint", default=None, help="a checkpoint directory under --output-dir")
    g = s.add_argument_group("settings (each overrides the YAML)")
    g.add_argument("--learning-rate", type=float, default=None)
    g.add_argument("--epochs", type=float, default=None)
    g.add_argument("--max-steps", type=int, default=None, help="optimizer steps (overrides --epochs)")
    g.add_argument("--per-device-train-batch-size", type=int, default=None, help="problems per micro-batch")
    g.add_argument("--gradient-accumulation-steps", type=int, default=None)
    g.add_argument("--max-length", type=int, default=None,
                   help="truncate longer conversations (counted); default: the model's context length")
    g.add_argument("--lr-scheduler-type", default=None)
    g.add_argument("--warmup-ratio", type=ratio, default=None, help="warmup steps as a share of all steps")
    g.add_argument("--warmup-steps", type=int, default=None)
    g.add_argument("--logging-steps", type=int, default=None)
    g.add_argument("--save-steps", type=int, default=None)
    g.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--normalizer", type=normalizer, default=None,
                   help="N of the objective: problems (default; per optimizer step) or a fixed number")
    g.add_argument("--chat-template", default=None, help="Jinja chat template file overriding the tokenizer's")
    g = s.add_argument_group("LoRA and sharding")
    g.add_argument("--lora", action=argparse.BooleanOptionalAction, default=None,
                   help="train LoRA adapters only (peft: pip install 'lark_fast[lora]')")
    g.add_argument("--lora-rank", type=int, default=None, help="default 64")
    g.add_argument("--lora-alpha", type=float, default=None, help="default 128")
    g.add_argument("--lora-dropout", type=float, default=None, help="default 0.05")
    g.add_argument("--lora-target-modules", default=None,
                   help="comma-separated module names, or all-linear (default: every projection matrix)")
    g.add_argument("--deepspeed", default=None, help="DeepSpeed JSON config (e.g. ZeRO-3); launch with torchrun")
    g.add_argument("--fsdp", action=argparse.BooleanOptionalAction, default=None,
                   help="FSDP2 (CUDA only; launch with torchrun)")
    s.set_defaults(func=cmd_train)
