"""Causal-LM fine-tuning (or training from scratch) of GPT-2 with ``AdaBalanceTrainer``.

The command line is ``HfArgumentParser`` over the model/data arguments below and transformers'
``TrainingArguments``, so every Trainer flag works, including ``--optim adabalance`` and
``--optim_args "final_lr=0.01,gamma=1e-3,beta3=0.99"`` (``import adabalance_hf`` registers the
AdaBalance names with transformers). The recipe's defaults differ from the Trainer's in two places
(``DEFAULT_OPTIM``, ``DEFAULT_OPTIM_ARGS`` below): ``--optim`` defaults to ``adabalancew``
(AdaBalance with AdamW-style weight decay), and an AdaBalance name gets ``beta3=0.99`` and
``final_lr=0.3`` unless ``--optim_args`` sets them. Pass ``--optim adamw_torch`` for AdamW. A bad
argument, an AdaBalance option included, or a bad data file ends the run with one line
``gpt2.py: error: <flag> <value> ...: <the fix>`` and exit code 2.

Examples::

    # pretrained gpt2 on WikiText-2 from the Hub, AdaBalance at the recipe's defaults
    python recipes/gpt2.py --model_name_or_path gpt2 --output_dir outputs/gpt2

    # offline: a small GPT-2 from a config, a tokenizer trained on the training text, local files
    python recipes/gpt2.py --config_overrides n_layer=4,n_embd=256,n_head=4 --train_tokenizer \
        --train_file wiki/test.txt --validation_file wiki/valid.txt --output_dir outputs/gpt2s \
        --learning_rate 1e-3 --num_train_epochs 1 --report_to none
    # the same with AdamW, for a side-by-side comparison: add --optim adamw_torch

Writes the model, the tokenizer, ``results.json`` (arguments, optimizer settings, validation
perplexity, log history with the AdaBalance bound diagnostics, wall time) to ``--output_dir``.

Checkpoints (``--save_steps``) are atomic and verified (``AtomicCheckpointsMixin``): a job killed at
any moment loses at most the steps since the last checkpoint. Start every run of a job with
``--resume_from_checkpoint auto``: it resumes from the newest complete checkpoint in
``--output_dir``, skipping damaged ones, or starts from scratch when there is none, and ends
bitwise where an uninterrupted run would (same seed, data and arguments). Bound the disk used
with ``--save_total_limit``; the newest complete checkpoint is never deleted.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    HfArgumentParser,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    TrainingArguments,
    default_data_collator,
    set_seed,
)

from adabalance_hf import AdaBalanceTrainer, adabalance_optimizer_names
from adabalance_hf.checkpoint import AtomicCheckpointsMixin
from adabalance_hf.integrations.transformers import OptimizerOptionError
from adabalance_hf.optim_args import parse_optim_args

__all__ = ["DataArguments", "ModelArguments", "fill_open_options", "main", "parse"]

PROG = Path(__file__).name

# The recipe's departures from the Trainer integration's fine-tuning defaults, measured on
# WikiText-2 (benchmarks/results/glue_quality.md, gpt2_settings.md): the decoupled weight decay of
# AdamW; a smoothed step size over ~100 steps, which training from scratch wants (a fine-tune
# wants ~10); and a final rate 3x the fine-tuning one, better at 3 of 4 rates of the lr grid.
DEFAULT_OPTIM = "adabalancew"
DEFAULT_OPTIM_ARGS = {"beta3": 0.99, "final_lr": 0.3}


@dataclass
class ModelArguments:
    """Which model to fine-tune, or which configuration to train from scratch, and its tokenizer."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "pretrained model: Hub id (gpt2) or local folder"}
    )
    config_name: str | None = field(
        default=None,
        metadata={
            "help": "train from scratch from this config (Hub id or folder); with neither this "
            "nor --model_name_or_path, GPT2Config() plus --config_overrides"
        },
    )
    config_overrides: str | None = field(
        default=None, metadata={"help": "size overrides, e.g. n_layer=4,n_embd=256,n_head=4"}
    )
    tokenizer_name: str | None = field(
        default=None, metadata={"help": "Hub id or folder (default: the model's or config's)"}
    )
    train_tokenizer: bool = field(
        default=False, metadata={"help": "train a byte-level BPE tokenizer on the training text"}
    )
    tokenizer_vocab_size: int = field(default=8192, metadata={"help": "for --train_tokenizer"})


@dataclass
class DataArguments:
    """The training and validation text: local files or a Hub dataset, cut into blocks."""

    dataset_name: str | None = field(
        default=None, metadata={"help": "Hub dataset (default wikitext, without local files)"}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "e.g. the raw v1"})
    train_file: str | None = field(default=None, metadata={"help": "local training text (.txt)"})
    validation_file: str | None = field(default=None, metadata={"help": "local validation text"})
    block_size: int = field(default=128, metadata={"help": "tokens per training sequence"})
    max_train_blocks: int | None = field(default=None, metadata={"help": "keep the first N"})
    max_eval_blocks: int | None = field(default=None, metadata={"help": "keep the first N"})


def read_lines(flag: str, path: str | Path) -> list[str]:
    """The lines of a UTF-8 text file; errors name the argument, the file (and line) and the fix."""
    path, what = Path(path), "a plain-text file such as WikiText-2's wiki.train.raw"
    if path.is_dir():
        raise FileNotFoundError(f"{flag} {path} is a folder; pass {what} inside it")
    if not path.is_file():
        raise FileNotFoundError(f"{flag} {path}: no such file; check the path (expected {what})")
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig").splitlines()
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ValueError(
            f"{flag} {path}: not UTF-8 text (line {line}); is it {what}? Convert it to UTF-8, "
            f"e.g. iconv -f latin1 -t utf-8"
        ) from None


def load_texts(data: DataArguments) -> tuple[list[str], list[str], str]:
    """Training and validation lines, from local files or the Hub."""
    if data.train_file or data.validation_file:
        texts = []
        files = {"--train_file": data.train_file, "--validation_file": data.validation_file}
        for flag, path in files.items():
            if not path:
                raise FileNotFoundError(
                    f"{flag} is missing: pass both --train_file and --validation_file (plain "
                    f"text, e.g. WikiText-2's wiki.train.raw and wiki.valid.raw), or neither to "
                    f"use --dataset_name from the Hub"
                )
            lines = read_lines(flag, path)
            if not any(line.strip() for line in lines):
                raise ValueError(
                    f"{flag} {path}: the file holds no text (empty or only blank lines); pass "
                    f"the file with the {'training' if flag == '--train_file' else 'validation'} "
                    f"text"
                )
            texts.append(lines)
        return texts[0], texts[1], f"files:{data.train_file},{data.validation_file}"
    import datasets

    name = data.dataset_name or "Salesforce/wikitext"
    config = data.dataset_config_name or ("wikitext-2-raw-v1" if "wikitext" in name else None)
    try:
        raw = datasets.load_dataset(name, config)
    except Exception as error:
        raise RuntimeError(
            f"could not load {name}/{config} from the Hub ({error}); offline, pass "
            f"--train_file and --validation_file"
        ) from error
    column = "text" if "text" in raw["train"].column_names else raw["train"].column_names[0]
    return list(raw["train"][column]), list(raw["validation"][column]), f"hub:{name}/{config}"


def train_tokenizer(lines: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (GPT-2's scheme) trained on ``lines``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator(lines, trainer)
    eos = "<|endoftext|>"
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=eos, eos_token=eos, unk_token=eos
    )


def build_model(model_args: ModelArguments, vocab_size: int) -> PreTrainedModel:
    """A pretrained model (its embeddings grown to ``vocab_size``) or a new one from a config."""
    if model_args.model_name_or_path:
        model = AutoModelForCausalLM.from_pretrained(model_args.model_name_or_path)
        if model.get_input_embeddings().num_embeddings < vocab_size:
            model.resize_token_embeddings(vocab_size)
        return model
    if model_args.config_name:
        config = AutoConfig.from_pretrained(model_args.config_name)
    else:
        config = GPT2Config()
    if model_args.config_overrides:
        config.update_from_string(model_args.config_overrides)
    config.vocab_size = vocab_size
    return AutoModelForCausalLM.from_config(config)


def blocks(
    lines: list[str], tokenizer: PreTrainedTokenizerBase, block_size: int, limit: int | None
) -> list[dict[str, list[int]]]:
    """Tokenize, concatenate and cut into ``block_size`` chunks (the remainder is dropped)."""
    lines = [line for line in lines if line.strip()]
    ids: list[int] = []
    for start in range(0, len(lines), 1000):
        for encoded in tokenizer(lines[start : start + 1000])["input_ids"]:
            ids.extend(encoded)
    count = len(ids) // block_size
    if limit is not None:
        count = min(count, limit)
    chunks = [ids[i * block_size : (i + 1) * block_size] for i in range(count)]
    return [{"input_ids": chunk, "labels": chunk} for chunk in chunks]


def parse(
    argv: list[str] | None = None,
) -> tuple[ModelArguments, DataArguments, TrainingArguments, dict[str, float]]:
    """Parse the command line (or one JSON config file) and fill in the recipe's defaults.

    An invalid argument, an AdaBalance option included (``--learning_rate=-1e-3``,
    ``--optim_args final_lr=x``), ends the program with one line that names the flag, the value
    and the fix, after the usage line, and exit code 2, as argparse does.

    Args:
        argv (list of str, optional): the arguments. Default: ``sys.argv[1:]``

    Returns:
        tuple: the three argument dataclasses and the AdaBalance options set from the recipe's
        defaults (those ``--optim_args`` left open), for the log.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    usage = "%(prog)s [-h] [--FLAG VALUE ...] | %(prog)s ARGUMENTS.json"  # not 100 lines of flags
    dataclasses = (ModelArguments, DataArguments, TrainingArguments)
    parser = HfArgumentParser(dataclasses, prog=PROG, usage=usage)
    parser.set_defaults(optim=DEFAULT_OPTIM)
    config = None
    if len(argv) == 1 and argv[0].endswith(".json"):
        config = {"optim": DEFAULT_OPTIM, **json.loads(Path(argv[0]).read_text())}
    try:  # TrainingArguments checks an AdaBalance name's options when it is created
        if config is not None:
            model_args, data_args, training_args = parser.parse_dict(config)
        else:
            model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
        training_args.optim_args, applied = fill_open_options(
            training_args.optim, training_args.optim_args, DEFAULT_OPTIM_ARGS
        )
    except (OptimizerOptionError, ValueError) as error:  # the latter: a bad --optim_args too
        parser.error(str(error))  # "--learning_rate -0.001 (with --optim adabalancew): ..."
    return model_args, data_args, training_args, applied


def fill_open_options(
    optim: str, optim_args: str | None, defaults: dict[str, float]
) -> tuple[str | None, dict[str, float]]:
    """Append to an AdaBalance name's ``optim_args`` the ``defaults`` it leaves open.

    Args:
        optim (str): the ``--optim`` name; other optimizers' ``optim_args`` are returned as is.
        optim_args (str, optional): the ``--optim_args`` string, ``key=value`` pairs.
        defaults (dict): the options to fill in where ``optim_args`` does not set them.

    Returns:
        tuple: the new ``optim_args`` string and the options filled in.

    Raises:
        ValueError: if ``optim_args`` is not a valid AdaBalance ``optim_args`` string.
    """
    if optim not in adabalance_optimizer_names():
        return optim_args, {}
    given = parse_optim_args(optim_args)
    applied = {key: value for key, value in defaults.items() if key not in given}
    pairs = [optim_args or "", *(f"{k}={v}" for k, v in applied.items())]
    return ",".join(pair for pair in pairs if pair), applied


def fail(training_args: TrainingArguments, message: str) -> NoReturn:
    """Exit with code 2 on every process; the main one prints ``gpt2.py: error: message``."""
    if training_args.process_index == 0:
        print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
    if torch.distributed.is_initialized():  # no process leaves before the message is out
        torch.distributed.barrier()
    sys.exit(2)


class RecipeTrainer(AtomicCheckpointsMixin, AdaBalanceTrainer):
    """AdaBalance's diagnostics, crash-safe checkpoints and ``--resume_from_checkpoint auto``."""


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the recipe; returns what it writes to ``results.json``.

    Args:
        argv (list of str, optional): the arguments. Default: ``sys.argv[1:]``
    """
    started = time.time()
    # Parse the arguments (AdaBalance's options are checked here too)
    model_args, data_args, training_args, recipe_defaults = parse(argv)
    if recipe_defaults and training_args.process_index == 0:  # said once, by the main process
        optim = getattr(training_args.optim, "value", training_args.optim)  # an enum member
        settings = ", ".join(f"{key}={value:g}" for key, value in recipe_defaults.items())
        print(
            f"optim={optim} with the GPT-2 recipe's defaults {settings} "
            "(set them with --optim_args)",
            flush=True,
        )
    set_seed(training_args.seed)

    # Load the data
    try:  # the errors name the flag, the file and the fix
        train_lines, eval_lines, source = load_texts(data_args)
    except (OSError, ValueError, RuntimeError) as error:
        fail(training_args, str(error))

    # Load or train the tokenizer, and build the model
    if model_args.train_tokenizer:
        tokenizer = train_tokenizer(train_lines, model_args.tokenizer_vocab_size)
    else:
        name = model_args.tokenizer_name or model_args.model_name_or_path or model_args.config_name
        if not name:
            fail(
                training_args,
                "no tokenizer: pass --tokenizer_name (Hub id or folder), --model_name_or_path, "
                "or --train_tokenizer to train one on the training text",
            )
        tokenizer = AutoTokenizer.from_pretrained(name)
    model = build_model(model_args, len(tokenizer))

    # Tokenize the text into blocks
    max_positions = getattr(model.config, "n_positions", data_args.block_size)
    if data_args.block_size > max_positions:
        fail(
            training_args,
            f"--block_size {data_args.block_size}: exceeds the model's n_positions "
            f"{max_positions}; lower it or raise n_positions in --config_overrides",
        )
    train_set = blocks(train_lines, tokenizer, data_args.block_size, data_args.max_train_blocks)
    eval_set = blocks(eval_lines, tokenizer, data_args.block_size, data_args.max_eval_blocks)
    if not train_set or not eval_set:
        fail(
            training_args,
            f"--block_size {data_args.block_size}: more tokens than the training or validation "
            "text holds; lower --block_size or give more text",
        )

    # Train! (the Trainer builds AdaBalance from --optim and --optim_args)
    trainer = RecipeTrainer(
        model=model,
        args=training_args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=tokenizer,
        data_collator=default_data_collator,
    )
    train_output = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)

    # Evaluate, save the model and the results
    eval_metrics = trainer.evaluate()
    perplexity = math.exp(eval_metrics["eval_loss"]) if eval_metrics["eval_loss"] < 50 else math.inf
    trainer.save_model()
    optimizer = trainer.optimizer
    inner = getattr(optimizer, "optimizer", optimizer)
    hyper = {k: v for k, v in inner.param_groups[0].items() if isinstance(v, (int, float, bool))}
    results = {
        "model_arguments": asdict(model_args),
        "data_arguments": asdict(data_args),
        "training_arguments": json.loads(training_args.to_json_string()),
        "recipe_defaults_applied": recipe_defaults,
        "data_source": source,
        "train_blocks": len(train_set),
        "eval_blocks": len(eval_set),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "optimizer": {"class": type(inner).__name__, **hyper},
        "train_metrics": train_output.metrics,
        "eval_metrics": eval_metrics,
        "validation_perplexity": perplexity,
        "log_history": trainer.state.log_history,
        "wall_time_s": time.time() - started,
    }
    if trainer.is_world_process_zero():
        out = Path(training_args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
        print(f"validation perplexity {perplexity:.2f} ({source}); wrote {out}", flush=True)
    return results


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
