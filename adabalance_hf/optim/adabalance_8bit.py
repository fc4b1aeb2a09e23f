"""The :class:`AdaBalance8bit` optimizer: AdaBalance with block-wise 8-bit state."""

from __future__ import annotations

from typing import ClassVar

from ._low_bit import LowBitAdaBalance

__all__ = ["AdaBalance8bit"]


class AdaBalance8bit(LowBitAdaBalance):
    r"""AdaBalance with its three states block-wise quantized to 8 bits.

    The algorithm, arguments and defaults are :class:`AdaBalance`'s; the state is stored in one
    byte per element plus one fp32 scale per ``block_size`` elements (3.09 bytes per parameter at
    ``block_size=128`` against 12 in fp32; AdamW needs 8), and decoded to fp32 for each step's
    arithmetic:

    * ``exp_avg`` (``int8``): sign and a 7-bit floating-point code (4 exponent, 3 mantissa bits)
      relative to the block's largest magnitude, rounded to nearest;
    * ``exp_avg_sq`` and ``exp_avg_lr`` (``uint8``): positive, spanning orders of magnitude: an
      8-bit floating-point code (5 exponent, 3 mantissa bits: 32 binades) relative to the block's
      largest value, rounded stochastically so that averages moving by less than a code step
      still move; the noise is a hash of the element's index and the step count, so a resumed
      run repeats an uninterrupted one bitwise.

    Each parameter moves by the unrounded fp32 ``m`` and ``s`` of its step; only what is stored
    is rounded. Blocks run along the last dimension; where ``block_size`` does not divide it, a
    tensor's blocks are their greatest common divisor if that is at least 32 (so 128 serves
    widths 384, 768 and 96). Parameters with fewer than 4,096 elements (biases, norm weights),
    complex ones, and those with no such block (or a sharded last dimension) keep fp32 state,
    as torchao's 8-bit optimizers keep small tensors; the first step warns if those that are
    not small hold more than 5% of the elements. Under DeepSpeed ZeRO the optimizer sees flat
    1-D partitions: they get 8-bit state when their length has such a divisor, else fp32.

    ``fused=True`` (the default, ``None``) runs one ``torch.compile``-generated kernel per tensor
    (CPU and CUDA; the first step compiles); ``fused=False`` runs the same arithmetic eagerly.
    There is no foreach path. Under ``torch.amp.GradScaler``, ``found_inf`` is read on the host
    (one synchronisation per step) and the gradients are unscaled in place.

    ``state_dict()`` holds the codes under AdaBalance's keys and the scales under
    ``"<key>_scale"``. :meth:`load_state_dict` also takes an :class:`AdaBalance` (fp32) state
    dict, quantizing it, one saved by :class:`AdaBalance4bit` and one saved with another
    ``block_size``; ``AdaBalance`` loads this class's state dicts, decoding them.

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
        amsbound (bool, optional): use the running maximum of ``v`` (stored in 8 bits too,
            rounded to nearest). Default: ``False``
        block_size (int, optional): elements per scale, along the last dimension (see above for
            dimensions it does not divide). Default: ``128`` (``None``: the default)
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
        >>> optimizer = AdaBalance8bit(model.parameters(), lr=1e-4, block_size=128)
    """

    state_bits: ClassVar[dict[str, int]] = {
        "exp_avg": 8,
        "exp_avg_sq": 8,
        "exp_avg_lr": 8,
        "max_exp_avg_sq": 8,
    }
