"""Run under torchrun (2 CPU processes, gloo): the weighted loss of WeightedSFTTrainer on an FSDP2-sharded
model (``fully_shard`` on every decoder layer and the root; ``head``: on the LM head as well). Each process
takes one of two records; the normaliser (2 problems) spans processes. Rank 0 saves the loss and every
parameter's full gradient.

    python -m torch.distributed.run --nproc_per_node 2 train_fsdp_worker.py OUT.pt {root,head}
"""
import sys

import torch
import torch.distributed as dist
from helpers import byte_tokenizer, make_records, make_trainer, published, tiny_llama
from torch.distributed.fsdp import fully_shard

from lark_fast.train import PackedCollator, WeightedSFTDataset


def main(out, wrap):
    from pathlib import Path
    tok = byte_tokenizer()
    records = make_records(n_problems=3, per_problem=3, seed=1)
    two = [records[0], records[3]]
    model = tiny_llama(vocab_size=len(tok), tie=wrap == "root", init_std=0.05)
    ds = WeightedSFTDataset(published(two, [0.25, 0.6]), tok, group_by_problem=False)
    trainer = make_trainer(model, ds, Path(out).parent, ddp_backend="gloo")
    assert trainer.accelerator.num_processes == 2
    for layer in model.model.layers:
        fully_shard(layer)
    if wrap == "head":
        fully_shard(model.lm_head)
    fully_shard(model)
    assert isinstance(model.lm_head.weight, torch.distributed.tensor.DTensor)
    model.train()
    batch = PackedCollator()([ds[dist.get_rank()]])
    loss = trainer.training_step(model, batch, num_items_in_batch=2.0)
    grads = {n: p.grad.full_tensor() for n, p in model.named_parameters()}
    losses = [None, None]
    dist.all_gather_object(losses, loss.item())
    if dist.get_rank() == 0:
        torch.save({"loss": sum(losses), "grads": grads}, out)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
