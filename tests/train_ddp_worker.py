"""Run under torchrun (2 CPU processes, gloo): one SGD step of WeightedSFTTrainer; rank 0 saves the update.

Each process gets one of the two records, so the step's normaliser (2 problems) spans processes.
"""
import sys

import torch
from helpers import byte_tokenizer, make_records, make_trainer, published, tiny_llama

from lark_fast.train import WeightedSFTDataset


def main(out):
    from pathlib import Path
    tok = byte_tokenizer()
    records = make_records(n_problems=3, per_problem=3, seed=1)
    two = [records[0], records[3]]
    model = tiny_llama(vocab_size=len(tok), tie=True, init_std=0.05)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ds = WeightedSFTDataset(published(two, [0.25, 0.6]), tok, group_by_problem=False)
    trainer = make_trainer(model, ds, Path(out).parent, ddp_backend="gloo")
    assert trainer.accelerator.num_processes == 2
    trainer.train()
    if trainer.accelerator.is_main_process:
        torch.save({n: p.detach() - before[n] for n, p in model.named_parameters()}, out)
    trainer.accelerator.wait_for_everyone()
    # an undestroyed gloo group can abort the process at exit ("terminate called without an active exception")
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
