"""The :class:`AdaBalance4bit` optimizer: AdaBalance with block-wise 4-bit state."""

from __future__ import annotations

from typing import ClassVar

from ._low_bit import LowBitAdaBalance

__all__ = ["AdaBalance4bit"]


class AdaBalance4bit(LowBitAdaBalance):
    r"""AdaBalance with ``m``, ``v`` and ``s`` block-wise quantized to 4 bits.

    The algorithm, arguments and guarantees are :class:`AdaBalance8bit`'s (its docstring has the
    details); ``exp_avg``, ``exp_avg_sq`` and ``exp_avg_lr`` are stored in half a byte per
    element (two codes per ``uint8``), one byte of scale per block for ``exp_avg`` and
    ``exp_avg_lr`` and per two blocks for ``exp_avg_sq`` (where a row holds an even number of
    blocks; the largest magnitude, rounded up to a float with 5 exponent and 3 mantissa bits
    relative to its row) and one byte per row (the power of two above the row's largest
    scale). With the default blocks of 32 that is about 1.59 bytes of state per parameter
    (1.593 on BERT-base, 1.591 on GPT-2 small, whose biases and norms keep fp32 state), against
    3.10 for :class:`AdaBalance8bit`, 12 for fp32 state and about 2.04 for the 8-bit AdamWs
    (two states).

    The layout comes from a per-state ablation (``benchmarks/lowbit_ablation.py``: GPT-2 on
    WikiText-2 at the GPT-2 recipe's settings, ``beta3=0.99``; records and the measured
    perplexities in ``benchmarks/results/lowbit_ablation.md``). What it found: every state must
    round stochastically (``m`` rounded to nearest, this class's first layout, cost +3.2%);
    ``v`` and ``s`` need codes without zero (with one, ``v`` diverged on a seed and ``s`` cost
    +26%); ``s`` needs 2 mantissa bits more than it needs range; blocks of 64 for every state,
    or scales rounded to powers of two, cost +5% to +9%, where one-byte scales with 3 mantissa
    bits cost nothing measurable against bf16 scales (-0.06% over 3 seeds); of the three states
    only ``v`` tolerates a scale per 64 elements (+0.16% against 32, over 3 seeds; ``m`` +2.1%,
    ``s`` +1.2%); 4 bits for the small tensors too cost +3.8%. The codes:

    * ``exp_avg``: a sign and a float with 2 exponent and 1 mantissa bits (E2M1: ``1/8`` to ``1``
      of the block's scale, and 0);
    * ``exp_avg_sq`` (and amsbound's maximum): a float with 3 exponent and 1 mantissa bits and
      no zero (``1.5 * 2**-8`` to ``1`` of the scale: a ``v`` rounded to 0 would make the step
      ``lr / eps``);
    * ``exp_avg_lr``: a float with 2 exponent and 2 mantissa bits and no zero (``1.25 / 16`` to
      ``1`` of the scale);

    each rounded stochastically (amsbound's maximum: to nearest).

    Measured against fp32 state: perplexity +0.66% in the GPT-2 recipe over 3 seeds and +1.21%
    in the ablation over 5 seeds (204.11 against 201.67; a seed moves it by about 2%; with
    ``v``'s scale per block, 1.61 bytes: +0.57% and +0.95%); on GLUE (``beta3=0.9``, 3 seeds
    each) MRPC F1 and SST-2 accuracy within a tenth of a point (figures in the precision guide).
    Its compiled step is slow on a CPU: at BERT-base shapes on 2 cores about 16x
    ``AdamW(fused=True)``, 2.2x :class:`AdaBalance8bit`, and its first compile takes about 2
    minutes with an empty compile cache (seconds in later processes).

    ``block_size`` (default 32) must be even. ``state_dict()`` holds the packed codes under
    AdaBalance's keys, shaped ``(*leading, blocks, block_size // 2)``, and the scales under
    ``"<key>_scale"``, ``(*leading, blocks // group + 1)`` bytes (the blocks' or pairs', then
    the row's; ``group`` is 2 for ``exp_avg_sq`` where the blocks of a row are even, else 1);
    :meth:`load_state_dict` takes the state dicts of :class:`AdaBalance` and
    :class:`AdaBalance8bit` too, and of this class with a scale per block for ``exp_avg_sq``
    (an earlier layout), re-encoding them, and both load this class's.

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
            Default: ``32``
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
    default_block_size: ClassVar[int] = 32
    scale_groups: ClassVar[dict[str, int]] = {"exp_avg_sq": 2, "max_exp_avg_sq": 2}
