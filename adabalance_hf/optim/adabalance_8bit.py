"""The :class:`AdaBalance8bit` optimizer: AdaBalance with block-wise 8-bit state."""

from __future__ import annotations

import numbers
import warnings
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT, _get_scalar_dtype

from ._blockwise_state import (
    CODE_DTYPES,
    MIN_QUANTIZED_NUMEL,
    dequantize_state,
    is_quantized_state,
    new_quantized_state,
    quantize_state,
    saved_block_size,
    tensor_block_size,
)
from ._blockwise_step import _blockwise_adabalance
from ._group_options import group_hyperparameters
from ._precision import LOW_PRECISION_DTYPES, compute_dtype
from .adabalance import AdaBalance

__all__ = ["AdaBalance8bit"]

# Share of a step's elements with fp32 state above which the first step warns: the user asked
# for 8-bit state and most of it is not.
_FALLBACK_WARNING_SHARE = 0.05


def check_block_size(block_size: Any, where: str = "AdaBalance8bit") -> int:
    """Return ``block_size`` if it is a positive integer, else raise a ``ValueError`` saying so."""
    if (
        isinstance(block_size, bool)
        or not isinstance(block_size, numbers.Integral)
        or block_size < 1
    ):
        raise ValueError(
            f"{where}: Invalid block_size: {block_size!r}; it must be a positive integer (the "
            f"number of elements that share one scale, e.g. block_size=128), and parameters "
            f"whose last dimension is a multiple of it get 8-bit state"
        )
    return int(block_size)


class AdaBalance8bit(AdaBalance):
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
    dict, quantizing it, and one saved with another ``block_size``; ``AdaBalance`` loads this
    class's state dicts, decoding them.

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
            dimensions it does not divide). Default: ``128``
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

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        beta3: float = 0.999,
        final_lr: float = 0.1,
        gamma: float = 1e-3,
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsbound: bool = False,
        *,
        block_size: int = 128,
        decoupled_weight_decay: bool = False,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        master_weights: bool = True,
        bf16_stochastic_round: bool = False,
        skip_nonfinite_grads: bool = False,
    ) -> None:
        self._block_size = check_block_size(block_size)
        if foreach:
            raise ValueError(
                "AdaBalance8bit: Invalid foreach: True; the 8-bit step has no foreach path "
                "(each tensor is one kernel). Pass fused=True (compiled, the default) or "
                "fused=False (the same arithmetic, eagerly)"
            )
        self._fallback_checked = False
        super().__init__(
            params,
            lr=lr,
            betas=betas,
            beta3=beta3,
            final_lr=final_lr,
            gamma=gamma,
            eps=eps,
            weight_decay=weight_decay,
            amsbound=amsbound,
            decoupled_weight_decay=decoupled_weight_decay,
            maximize=maximize,
            foreach=False,
            fused=fused is not False,
            master_weights=master_weights,
            bf16_stochastic_round=bf16_stochastic_round,
            skip_nonfinite_grads=skip_nonfinite_grads,
        )

    def _subclass_defaults(self) -> dict[str, Any]:
        return {"block_size": self._block_size}

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        r"""Add a param group, checking its ``block_size``; see :meth:`AdaBalance.add_param_group`.

        Args:
            param_group (dict): the parameters under ``"params"`` and any per-group options.
        """
        if "block_size" in param_group:
            check_block_size(param_group["block_size"], f"param group {len(self.param_groups)}")
        if param_group.get("foreach"):
            raise ValueError(
                f"AdaBalance8bit: param group {len(self.param_groups)} sets foreach=True; the "
                f"8-bit step has no foreach path. Leave it out, or pass fused=False"
            )
        super().add_param_group(param_group)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_fallback_checked", True)
        self.__dict__.setdefault("_block_size", self.defaults.get("block_size", 128))

    def _quantized(self, group: dict[str, Any], param: Tensor) -> bool:
        state = self.state.get(param)
        if state and "exp_avg" in state:
            return is_quantized_state(state)
        return tensor_block_size(param, group["block_size"]) is not None

    def _fp32_state_params(self, group: dict[str, Any]) -> list[Tensor]:
        return [p for p in super()._fp32_state_params(group) if not self._quantized(group, p)]

    def _kernel_reads_found_inf(self) -> bool:
        return False  # the 8-bit kernel does not take GradScaler's tensors

    def _step_group(
        self, group: dict[str, Any], *, grad_scale: Tensor | None, found_inf: Tensor | None
    ) -> None:
        if not self._fallback_checked:
            self._warn_about_fp32_state()
        positions = [
            i
            for i, p in enumerate(group["params"])
            if p.grad is not None and self._quantized(group, p)
        ]
        if positions:
            self._step_quantized(group, positions, grad_scale)
        # The parameters with fp32 state are small (biases, norm weights): the default path of
        # AdaBalance steps them, not its fused kernel, whose compile would double the first step.
        fp32_group = {**group, "fused": False, "foreach": None}
        super()._step_group(fp32_group, grad_scale=grad_scale, found_inf=found_inf)

    def _step_quantized(
        self, group: dict[str, Any], positions: list[int], grad_scale: Tensor | None
    ) -> None:
        names = ("params", "grads", "state_steps", "master_params")
        names += tuple(key + "s" for key in CODE_DTYPES)
        names += tuple(key + "_scales" for key in CODE_DTYPES)
        lists: dict[str, list[Any]] = {name: [] for name in (*names, "block_sizes")}
        for position in positions:
            param = group["params"][position]
            state = self.state[param]
            if "step" not in state:
                state["step"] = torch.tensor(0.0, dtype=_get_scalar_dtype())
            if "exp_avg" in state:
                block_size = saved_block_size(state)
            else:
                block_size = tensor_block_size(param, group["block_size"])
            lists["block_sizes"].append(block_size)
            for key in CODE_DTYPES:
                if key not in state and (key != "max_exp_avg_sq" or group["amsbound"]):
                    state.update(new_quantized_state(param, key, block_size))
            low = param.dtype in LOW_PRECISION_DTYPES
            if low and group["master_weights"] and "master_param" not in state:
                state["master_param"] = param.detach().to(torch.float32, copy=True)
            lists["params"].append(param)
            lists["grads"].append(param.grad)
            lists["state_steps"].append(state["step"])
            if low and group["master_weights"]:
                lists["master_params"].append(state["master_param"])
            for key in CODE_DTYPES:
                if key != "max_exp_avg_sq" or group["amsbound"]:
                    lists[key + "s"].append(state[key])
                    lists[key + "_scales"].append(state[key + "_scale"])
        if grad_scale is not None:
            torch._foreach_mul_(lists["grads"], 1.0 / grad_scale.item())
        masters = lists.pop("master_params")
        mixed = 0 < len(masters) < len(positions)
        if mixed:  # some bf16/fp16 parameters with master copies, some fp32: two calls
            self._step_quantized_split(group, lists, masters)
            return
        self._run(group, lists, masters or None)

    def _step_quantized_split(
        self,
        group: dict[str, Any],
        lists: dict[str, list[Any]],
        masters: list[Tensor],
    ) -> None:
        low = [p.dtype in LOW_PRECISION_DTYPES for p in lists["params"]]
        for keep, part_masters in ((low, masters), ([not x for x in low], None)):
            part = {
                name: [t for t, k in zip(values, keep, strict=True) if k] if values else values
                for name, values in lists.items()
            }
            self._run(group, part, part_masters)

    def _run(
        self,
        group: dict[str, Any],
        lists: dict[str, list[Any]],
        masters: list[Tensor] | None,
    ) -> None:
        _blockwise_adabalance(
            **lists, master_params=masters, fused=group["fused"], **group_hyperparameters(group)
        )

    def _warn_about_fp32_state(self) -> None:
        """Warn if tensors big enough for 8-bit state but without a block hold many elements.

        Small tensors keep fp32 state by design; a width that ``block_size`` does not fit is
        something the user can change.
        """
        self._fallback_checked = True
        kept = [
            (tuple(p.shape), group["block_size"])
            for group in self.param_groups
            for p in group["params"]
            if p.is_floating_point()
            and p.numel() >= MIN_QUANTIZED_NUMEL
            and tensor_block_size(p, group["block_size"]) is None
        ]
        total = sum(p.numel() for group in self.param_groups for p in group["params"])
        kept_numel = sum(torch.Size(shape).numel() for shape, _ in kept)
        if total and kept_numel / total > _FALLBACK_WARNING_SHARE:
            largest = sorted(kept, key=lambda item: -torch.Size(item[0]).numel())[:3]
            warnings.warn(
                f"AdaBalance8bit keeps fp32 state for {kept_numel / total:.0%} of the elements "
                f"(largest: {[shape for shape, _ in largest]}): their last dimension shares no "
                f"divisor of at least 32 with block_size={largest[0][1]} (or is sharded). Pick "
                f"a block_size that divides the last dimensions, e.g. 32 or 64 (1-D tensors: "
                f"DeepSpeed ZeRO hands the optimizer flat partitions, whose length must have "
                f"such a divisor)",
                UserWarning,
                stacklevel=6,  # the caller of optimizer.step()
            )

    def _convert_loaded_state(self) -> None:
        """Bring every loaded state to this optimizer's layout (called after loading)."""
        for group in self.param_groups:
            group.setdefault("block_size", self._block_size)
            for param in group["params"]:
                state = self.state.get(param)
                if not state or "exp_avg" not in state:
                    continue
                wanted = tensor_block_size(param, group["block_size"])
                if is_quantized_state(state) and saved_block_size(state) != wanted:
                    dequantize_state(state, param, compute_dtype(param.dtype))
                if wanted is not None and not is_quantized_state(state):
                    quantize_state(state, param, wanted)
