"""Run under torchrun (2 CPU processes, gloo): WeightedSFTTrainer on two records, one per process, so the
step's normaliser (2 problems) spans processes. Rank 0 saves the result to OUT.

    python -m torch.distributed.run --nproc_per_node 2 train_dist_worker.py MODE[,MODE...] OUT

saves ``{mode: result}``; several modes share one start-up (which costs more than the modes themselves).

MODE ddp:   one SGD step of the Trainer under DDP; saves the parameter update.
MODE zero3: the same under DeepSpeed ZeRO-3 (the Trainer's integration; every parameter partitioned).
MODE fsdp2: the loss and its backward on a model sharded with FSDP2's ``fully_shard`` (every decoder
            layer, then the root; the Trainer's own FSDP needs CUDA): ``{"root": ..., "head": ...}`` with the
            loss and every parameter's full gradient, "root" with tied embeddings and the head in the root's
            group, "head" with an untied head sharded on its own.
"""
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from helpers import byte_tokenizer, make_records, make_trainer, published, tiny_llama

from lark_fast.train import PackedCollator, WeightedSFTDataset


def dataset(tok):
    records = make_records(n_problems=3, per_problem=3, seed=1)
    return WeightedSFTDataset(published([records[0], records[3]], [0.25, 0.6]), tok, group_by_problem=False)


def sgd_step(out, **kw):
    tok = byte_tokenizer()
    model = tiny_llama(vocab_size=len(tok), tie=True, init_std=0.05)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = make_trainer(model, dataset(tok), Path(out).parent, ddp_backend="gloo", **kw)
    assert trainer.accelerator.num_processes == 2
    trainer.train()
    if "deepspeed" in kw:
        import deepspeed
        assert trainer.model_wrapped.zero_optimization_stage() == 3
        assert all(p.numel() == 0 for p in model.parameters())  # partitioned: each process holds a slice
        with deepspeed.zero.GatheredParameters(list(model.parameters())):
            after = {n: p.detach().clone() for n, p in model.named_parameters()}
    else:
        after = {n: p.detach() for n, p in model.named_parameters()}
    return {n: after[n] - before[n] for n in before}


def fsdp2_grads(out, wrap):
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor
    tok = byte_tokenizer()
    model = tiny_llama(vocab_size=len(tok), tie=wrap == "root", init_std=0.05)
    ds = dataset(tok)
    trainer = make_trainer(model, ds, Path(out).parent, ddp_backend="gloo")
    for layer in model.model.layers:
        fully_shard(layer)
    if wrap == "head":
        fully_shard(model.lm_head)
    fully_shard(model)
    model.train()
    loss = trainer.training_step(model, PackedCollator()([ds[dist.get_rank()]]), num_items_in_batch=2.0)
    # outside a forward the head's weight is a shard: a loss reading it there would see half the vocabulary
    assert isinstance(model.lm_head.weight, DTensor) and model.lm_head.weight.to_local().shape[0] < len(tok)
    losses = [None, None]
    dist.all_gather_object(losses, loss.item() / 2)  # each process's loss is multiplied by the world size
    return {"loss": sum(losses), "grads": {n: p.grad.full_tensor() for n, p in model.named_parameters()}}


def run(mode, out):
    if mode == "fsdp2":
        return {wrap: fsdp2_grads(out, wrap) for wrap in ("root", "head")}
    if mode == "zero3":
        import deepspeed.ops
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # gloo, not a kernel compiled on first use
        return sgd_step(out, deepspeed={"zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
                                        "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
                                        "train_batch_size": "auto", "gradient_clipping": "auto"})
    assert mode == "ddp", mode
    return sgd_step(out)


def main(modes, out):
    result = {mode: run(mode, out) for mode in modes.split(",")}
    if dist.get_rank() == 0:
        torch.save(result, out)
    dist.barrier()
    # an undestroyed gloo group can abort the process at exit ("terminate called without an active exception")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
