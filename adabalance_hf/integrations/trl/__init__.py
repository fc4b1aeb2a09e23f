"""AdaBalance for TRL: ``SFTTrainer`` and ``DPOTrainer`` with the AdaBalance optimizer names.

``optim="adabalance"`` (``--optim adabalance``) and the other AdaBalance names, options in
``optim_args``, every TRL default kept::

    from adabalance_hf.integrations.trl import AdaBalanceSFTConfig, AdaBalanceSFTTrainer

    args = AdaBalanceSFTConfig(output_dir="out", optim="adabalancew")
    trainer = AdaBalanceSFTTrainer(model=model, args=args, train_dataset=dataset)

Any other TRL trainer gets the names the same way, from the two mixins::

    @dataclass
    class AdaBalanceKTOConfig(AdaBalanceArgumentsMixin, KTOConfig):
        pass

    class AdaBalanceKTOTrainer(AdaBalanceTrainerMixin, KTOTrainer):
        pass

Needs ``trl`` (``pip install "adabalance-hf[trl]"``).
"""

from dataclasses import dataclass

from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

from ..transformers import AdaBalanceArgumentsMixin, AdaBalanceTrainerMixin

__all__ = [
    "AdaBalanceDPOConfig",
    "AdaBalanceDPOTrainer",
    "AdaBalanceSFTConfig",
    "AdaBalanceSFTTrainer",
]


@dataclass
class AdaBalanceSFTConfig(AdaBalanceArgumentsMixin, SFTConfig):
    """``trl.SFTConfig`` with the AdaBalance optimizer names (see ``AdaBalanceArgumentsMixin``)."""


class AdaBalanceSFTTrainer(AdaBalanceTrainerMixin, SFTTrainer):
    """``trl.SFTTrainer`` that builds AdaBalance for its names (see ``AdaBalanceTrainerMixin``)."""


@dataclass
class AdaBalanceDPOConfig(AdaBalanceArgumentsMixin, DPOConfig):
    """``trl.DPOConfig`` with the AdaBalance optimizer names (see ``AdaBalanceArgumentsMixin``)."""


class AdaBalanceDPOTrainer(AdaBalanceTrainerMixin, DPOTrainer):
    """``trl.DPOTrainer`` that builds AdaBalance for its names (see ``AdaBalanceTrainerMixin``)."""
