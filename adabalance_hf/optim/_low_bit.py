"""What :class:`AdaBalance8bit` and :class:`AdaBalance4bit` share: block-wise low-bit state.

:class:`LowBitAdaBalance` creates, steps, loads and converts the state; a subclass names its
codes' width per state (``state_bits``, read in ``_blockwise_state.CODECS``) and documents itself.
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT, _get_scalar_dtype

from . import _kinds, options
from ._blockwise_state import (
    CODECS,
    MIN_QUANTIZED_NUMEL,
    STATE_KEYS,
    dequantize_state,
    is_quantized_state,
    new_quantized_state,
    quantize_state,
    saved_bits,
    saved_block_size,
    saved_scale_groups,
    tensor_block_size,
)
from ._blockwise_step import StateCodecs, _blockwise_adabalance
from ._precision import LOW_PRECISION_DTYPES, compute_dtype
from .adabalance import AdaBalance

__all__ = ["LowBitAdaBalance"]

# Share of a step's elements with fp32 state above which the first step warns: the user asked
# for low-bit state and most of it is not.
_FALLBACK_WARNING_SHARE = 0.05


def check_block_size(block_size: Any, where: str, even: bool = False) -> int:
    """Return ``block_size`` if it is a positive (``even``: even) integer, else raise saying so,
    naming ``where``."""
    try:
        return _kinds.check_block_size(block_size, even=even)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None


class LowBitAdaBalance(AdaBalance):
    """AdaBalance with block-wise low-bit state; see :class:`AdaBalance8bit` for the arguments.

    Subclasses set :attr:`state_bits`.
    """

    #: The width of each state's codes, by state key.
    state_bits: ClassVar[dict[str, int]] = {}
    #: The ``block_size`` that ``None`` stands for.
    default_block_size: ClassVar[int] = 128
    #: Consecutive blocks that share one scale, by state key (1 where missing, and in a row
    #: whose blocks they do not divide).
    scale_groups: ClassVar[dict[str, int]] = {}

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
        block_size: int | None = None,
        decoupled_weight_decay: bool = False,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        master_weights: bool = True,
        bf16_stochastic_round: bool = False,
        skip_nonfinite_grads: bool = False,
    ) -> None:
        arguments = options.option_arguments(locals())  # the table's options, by name
        block_size = arguments.pop("block_size")
        if block_size is None:
            block_size = self.default_block_size
        self._block_size = check_block_size(block_size, self._name(), self._packs())
        if foreach:
            raise ValueError(
                f"{self._name()}: Invalid foreach: True; the low-bit step has no foreach path "
                f"(each tensor is one kernel). Pass fused=True (compiled, the default) or "
                f"fused=False (the same arithmetic, eagerly)"
            )
        self._fallback_checked = False
        super().__init__(params, **{**arguments, "foreach": False, "fused": fused is not False})

    @classmethod
    def _name(cls) -> str:
        return cls.__name__

    @classmethod
    def _packs(cls) -> bool:
        """Whether some state packs two codes per byte (then blocks must be even)."""
        return any(bits < 8 for bits in cls.state_bits.values())

    def _subclass_defaults(self) -> dict[str, Any]:
        return {"block_size": self._block_size}

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        r"""Add a param group, checking its ``block_size``; see :meth:`AdaBalance.add_param_group`.

        Args:
            param_group (dict): the parameters under ``"params"`` and any per-group options.
        """
        if param_group.get("block_size", 0) is None:
            param_group["block_size"] = self._block_size
        if "block_size" in param_group:
            where = f"{self._name()}: param group {len(self.param_groups)}"
            check_block_size(param_group["block_size"], where, self._packs())
        if param_group.get("foreach"):
            raise ValueError(
                f"{self._name()}: param group {len(self.param_groups)} sets foreach=True; the "
                f"low-bit step has no foreach path. Leave it out, or pass fused=False"
            )
        super().add_param_group(param_group)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_fallback_checked", True)
        default = self.defaults.get("block_size") or self.default_block_size
        self.__dict__.setdefault("_block_size", default)

    def _block(self, param: Tensor, block_size: int) -> int | None:
        """The block of ``param``'s new low-bit state, or None if it keeps fp32 state."""
        block = tensor_block_size(param, block_size)
        return None if block is None or (self._packs() and block % 2) else block

    def _scale_group(self, param: Tensor, block: int, key: str) -> int:
        """The scale group of state ``key`` of ``param`` whose blocks are ``block`` long."""
        group = self.scale_groups.get(key, 1)
        return group if (param.shape[-1] // block) % group == 0 else 1

    def _scale_groups(self, param: Tensor, block: int) -> dict[str, int]:
        """The scale group of each state of ``param`` whose blocks are ``block`` long."""
        return {key: self._scale_group(param, block, key) for key in STATE_KEYS}

    def _quantized(self, group: dict[str, Any], param: Tensor) -> bool:
        state = self.state.get(param)
        if state and "exp_avg" in state:
            return is_quantized_state(state)
        return self._block(param, group["block_size"]) is not None

    def _fp32_state_params(self, group: dict[str, Any]) -> list[Tensor]:
        return [p for p in super()._fp32_state_params(group) if not self._quantized(group, p)]

    def _kernel_reads_found_inf(self) -> bool:
        return False  # the low-bit kernel does not take GradScaler's tensors

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
        names = ("params", "grads", "state_steps", "master_params", "codecs")
        names += tuple(key + "s" for key in STATE_KEYS)
        names += tuple(key + "_scales" for key in STATE_KEYS)
        lists: dict[str, list[Any]] = {name: [] for name in names}
        keys = STATE_KEYS if group["amsbound"] else STATE_KEYS[:-1]
        for position in positions:
            param = group["params"][position]
            state = self.state[param]
            if "step" not in state:
                state["step"] = torch.tensor(0.0, dtype=_get_scalar_dtype())
            if "exp_avg" in state:
                block_size = saved_block_size(state)
            else:
                block_size = self._block(param, group["block_size"])
            for key in keys:
                if key not in state:  # max_exp_avg_sq also when amsbound is switched on
                    bits, scale_group = (
                        self.state_bits[key],
                        self._scale_group(param, block_size, key),
                    )
                    state.update(new_quantized_state(param, key, block_size, bits, scale_group))
            low = param.dtype in LOW_PRECISION_DTYPES
            if low and group["master_weights"] and "master_param" not in state:
                state["master_param"] = param.detach().to(torch.float32, copy=True)
            lists["params"].append(param)
            lists["grads"].append(param.grad)
            lists["state_steps"].append(state["step"])
            if low and group["master_weights"]:
                lists["master_params"].append(state["master_param"])
            bits = saved_bits(state)
            codecs = [CODECS[bits[key]][key] for key in keys]
            lists["codecs"].append(StateCodecs(*codecs, *([None] * (4 - len(keys)))))
            for key in keys:
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
            **lists,
            master_params=masters,
            fused=group["fused"],
            owner=self._name(),
            hyper=options.hyper_of(group),
        )

    def _warn_about_fp32_state(self) -> None:
        """Warn if tensors big enough for low-bit state but without a block hold many elements.

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
            and self._block(p, group["block_size"]) is None
        ]
        total = sum(p.numel() for group in self.param_groups for p in group["params"])
        kept_numel = sum(torch.Size(shape).numel() for shape, _ in kept)
        if total and kept_numel / total > _FALLBACK_WARNING_SHARE:
            largest = sorted(kept, key=lambda item: -torch.Size(item[0]).numel())[:3]
            warnings.warn(
                f"{self._name()} keeps fp32 state for {kept_numel / total:.0%} of the elements "
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
                wanted = self._block(param, group["block_size"])
                if is_quantized_state(state) and (
                    saved_block_size(state) != wanted
                    or not self._has_own_bits(state)
                    or not self._has_own_scale_groups(state, param, wanted)
                ):
                    dequantize_state(state, param, compute_dtype(param.dtype))
                if wanted is not None and not is_quantized_state(state):
                    scale_groups = self._scale_groups(param, wanted)
                    quantize_state(state, param, wanted, self.state_bits, scale_groups)

    def _has_own_bits(self, state: dict[str, Any]) -> bool:
        return all(self.state_bits[key] == bits for key, bits in saved_bits(state).items())

    def _has_own_scale_groups(self, state: dict[str, Any], param: Tensor, block: int) -> bool:
        wanted = self._scale_groups(param, block)
        return all(wanted[key] == group for key, group in saved_scale_groups(state).items())


options.check_signature(LowBitAdaBalance.__init__, low_bit=True)
