"""A training script written the way transformers' examples are: stock classes only.

``HfArgumentParser`` over a script dataclass and the stock ``TrainingArguments``, the stock
``Trainer``; it knows nothing of adabalance_hf. Each process writes ``report-<rank>.json`` into
``--output_dir`` (the optimizer the Trainer built, its options, the world) and exits with
``--exit_code``.
"""

import json
import os
import sys
import time
from dataclasses import dataclass, field

import torch
from transformers import GPT2Config, GPT2LMHeadModel, HfArgumentParser, Trainer, TrainingArguments


@dataclass
class ScriptArguments:
    exit_code: int = field(default=0, metadata={"help": "exit with this code"})
    wait_for_signal: bool = field(default=False, metadata={"help": "sleep after the report"})


def main() -> None:
    parser = HfArgumentParser((ScriptArguments, TrainingArguments))
    script, args = parser.parse_args_into_dataclasses()
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2, n_positions=16)
    model = GPT2LMHeadModel(config)
    data = []
    for _ in range(16):
        ids = torch.randint(0, 50, (8,))
        data.append({"input_ids": ids, "labels": ids})
    trainer = Trainer(model=model, args=args, train_dataset=data)
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    optimizer = trainer.optimizer
    while hasattr(optimizer, "optimizer"):  # accelerate's wrapper
        optimizer = optimizer.optimizer
    report = {
        "optimizer": type(optimizer).__name__,
        "defaults": {k: v for k, v in optimizer.defaults.items() if isinstance(v, (int, float))},
        "decay": [group["weight_decay"] for group in optimizer.param_groups],
        "world_size": args.world_size,
        "argv": sys.argv[1:],
        "pid": os.getpid(),
        "steps": trainer.state.global_step,
    }
    path = os.path.join(args.output_dir, f"report-{args.process_index}.json")
    with open(path, "w") as file:
        json.dump(report, file)
    if torch.distributed.is_initialized():  # gloo's threads, else an abort at exit at times
        torch.distributed.destroy_process_group()
    if script.wait_for_signal:
        print("READY", flush=True)
        time.sleep(120)
    sys.exit(script.exit_code)


if __name__ == "__main__":
    main()
