"""The :class:`AdaBalance4bit` optimizer: AdaBalance with block-wise 4-bit state."""

from __future__ import annotations

from typing import ClassVar

from ._low_bit import LowBitAdaBalance

__all__ = ["AdaBalance4bit"]


class AdaBalance4bit(LowBitAdaBalance):
    r"""AdaBalance with its three states block-wise quantized to 4 bits.

    The algorithm, arguments, defaults and guarantees are :class:`AdaBalance8bit`'s (its
    docstring has the details); each state is stored in half a byte per element, two codes per
    ``uint8``, plus one fp32 scale (the block's largest magnitude) per ``block_size`` elements:
    1.59 bytes per parameter at ``block_size=128``, against 3.09 for :class:`AdaBalance8bit`,
    about 2.03 for the 8-bit AdamWs and 12 for fp32 state. The codes, chosen state by state
    (``benchmarks/lowbit_ablation.py`` measures each):

    * ``exp_avg``: E2M1 (sign, 2 exponent and 1 mantissa bits, the FP4 element of the MX and
      NVFP4 formats) relative to the block's largest magnitude, rounded to nearest;
    * ``exp_avg_sq``: ``v / scale`` in 16 equal steps with no zero, rounded stochastically: the
      map of Li et al. (2023), "Memory Efficient Optimizers with 4-bit States", for the second
      moment, where a ``v`` rounded to 0 would make the step ``lr / eps`` (amsbound's maximum
      uses it too, rounded to nearest);
    * ``exp_avg_lr``: a float with 3 exponent and 1 mantissa bits (7.5 binades below the
      block's largest rate), rounded stochastically.

    ``block_size`` must be even. ``state_dict()`` holds the packed codes under AdaBalance's keys,
    shaped ``(*leading, blocks, block_size // 2)``, and the scales under ``"<key>_scale"``;
    :meth:`load_state_dict` takes the state dicts of :class:`AdaBalance` and
    :class:`AdaBalance8bit` too, re-encoding them, and both load this class's.

    Args:
        params (iterable): iterable of parameters or named parameters to optimize, or of dicts
            defining parameter groups.
        lr (float, Tensor, optional): learning rate. Default: ``1e-3``
        betas (tuple[float, float], optional): decay rates of ``m`` and ``v``.
            Default: ``(0.9, 0.999)``
        beta3 (float, optional): decay rate of the smoothed step size. Default: ``0.999``
        final_lr (float, optional): the SGD rate both bounds converge to. Default: ``0.1``
        gamma (float, optional): convergence speed of the bounds; ``0`` disables them.
            Default: ``1e-3``
        eps (float, optional): term added to the denominator. Default: ``1e-8``
        weight_decay (float, optional): weight decay coefficient. Default: ``0``
        amsbound (bool, optional): use the running maximum of ``v``. Default: ``False``
        block_size (int, optional): elements per scale, along the last dimension; even.
            Default: ``128``
        decoupled_weight_decay (bool, optional): AdamW-style weight decay. Default: ``False``
        maximize (bool, optional): maximize the objective. Default: ``False``
        foreach (bool, optional): must be ``None`` or ``False``. Default: ``None``
        fused (bool, optional): compile the step (``None`` or ``True``) or run it eagerly
            (``False``). Default: ``None``
        master_weights (bool, optional): fp32 master copies of bf16/fp16 parameters (4 more
            bytes per parameter). Default: ``True``
        bf16_stochastic_round (bool, optional): without master weights, round bf16 results
            stochastically. Default: ``False``
        skip_nonfinite_grads (bool, optional): skip whole steps whose gradients hold inf or
            nan, as :class:`AdaBalance` does. Default: ``False``

    Example:
        >>> # xdoctest: +SKIP
        >>> optimizer = AdaBalance4bit(model.parameters(), lr=1e-4, block_size=128)
    """

    state_bits: ClassVar[dict[str, int]] = {
        "exp_avg": 4,
        "exp_avg_sq": 4,
        "exp_avg_lr": 4,
        "max_exp_avg_sq": 4,
    }
