"""CI's wheel check: run from outside the source tree, in a fresh venv holding only the wheel.

Fails if the installed package imports from the checkout, misses a file (the launcher's
bootstrap), or cannot step, register the names or run an unmodified script under
``adabalance-run``.
"""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

import adabalance_hf
from adabalance_hf import AdaBalance, AdaBalance8bit

here = Path(adabalance_hf.__file__).resolve()
assert "site-packages" in here.parts, f"adabalance_hf comes from {here}, not from the wheel"
print(f"adabalance_hf {adabalance_hf.__version__} from {here.parent}")

for cls in (AdaBalance, AdaBalance8bit):
    param = torch.nn.Parameter(torch.ones(64, 64))
    optimizer = cls([param], lr=1e-2, **({"fused": False} if cls is AdaBalance8bit else {}))
    param.grad = torch.ones_like(param)
    optimizer.step()
    assert bool((param < 1).all()), cls.__name__
    print(f"{cls.__name__}: one step moved every element")

from transformers import Trainer, TrainingArguments  # noqa: E402

with tempfile.TemporaryDirectory() as out:
    args = TrainingArguments(out, optim="adabalancew_8bit", optim_args="block_size=64")
    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args)
    assert cls is AdaBalance8bit and kwargs["block_size"] == 64, (cls, kwargs)
    print("TrainingArguments(optim='adabalancew_8bit'): AdaBalance8bit")

    script = Path(out) / "stock.py"
    script.write_text(
        "from transformers import HfArgumentParser, Trainer, TrainingArguments\n"
        "(args,) = HfArgumentParser(TrainingArguments).parse_args_into_dataclasses()\n"
        "print(Trainer.get_optimizer_cls_and_kwargs(args)[0].__name__)\n"
    )
    launcher = Path(sys.executable).with_name("adabalance-run")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    command = [str(launcher), str(script), "--output_dir", out, "--optim", "adabalance"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=out, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-1] == "AdaBalance", done.stdout
    print("adabalance-run stock.py --optim adabalance: AdaBalance")
print("wheel check: passed")
