"""AdaBalance4bit: its codes, one step against the float64 oracle, its state, and the rounding of
every stochastically rounded state of both low-bit optimizers.

The codes are checked against a float64 decoder written here from the format the docstrings
state, not against the package's decoder. 4-bit codes are packed two per byte (element ``k`` of a
block in the low nibble of byte ``k``, element ``k + block_size // 2`` in its high nibble),
``(*lead, blocks, block_size // 2)``: ``exp_avg`` a sign bit and a 3-bit
magnitude ``c`` standing for ``{0, 1/8, 3/16, 1/4, 3/8, 1/2, 3/4, 1}[c]`` of the block's scale,
``exp_avg_sq`` (and ``max_exp_avg_sq``) ``2**(e - 8) * (1 + m / 2)`` of it with
``e, m = (c + 1) // 2, (c + 1) % 2``, never 0, and ``exp_avg_lr`` ``2**(e - 4) * (1 + m / 4)``
with ``e, m = (c + 1) // 4, (c + 1) % 4``, never 0. The scales ``(*lead, blocks + 1)`` are bytes:
the last of a row ``t`` makes the row's top ``2**(t - 127)`` (0 for a row of zeros), and a block's
byte ``b`` is ``2**((b >> 3) - 31) * (1 + (b & 7) / 8)`` of the top, or 0 for ``b = 0``.
``exp_avg_sq`` (and ``max_exp_avg_sq``) has one scale byte per two consecutive blocks,
``(*lead, blocks // 2 + 1)``, where a row has an even number of blocks.
"""

from __future__ import annotations

import io
from typing import ClassVar

import pytest
import torch

from adabalance_hf import AdaBalance, AdaBalance4bit, AdaBalance8bit
from adabalance_hf.distributed.state_bytes import optimizer_state_bytes
from adabalance_hf.optim import decoded_state
from tests._oracle import OracleAdaBalance

KEYS = ("exp_avg", "exp_avg_sq", "exp_avg_lr")
EAGER = {"fused": False}
SIGNED_MAGNITUDES = torch.tensor(
    [0, 1 / 8, 3 / 16, 1 / 4, 3 / 8, 1 / 2, 3 / 4, 1], dtype=torch.float64
)


def _unpack(codes: torch.Tensor) -> torch.Tensor:
    """Nibbles of packed codes ``(*lead, blocks, half)`` as int64 ``(*lead, blocks, 2 * half)``."""
    byte = codes.to(torch.int64)
    return torch.cat([byte & 15, byte >> 4], dim=-1)


def reference_scales(stored: torch.Tensor) -> torch.Tensor:
    """float64 block scales ``(*lead, blocks)`` of AdaBalance4bit's stored scale bytes."""
    stored = stored.to(torch.int64)
    block, row = stored[..., :-1], stored[..., -1:]
    top = torch.where(row > 0, torch.exp2(row.double() - 127), 0.0)
    ratio = torch.exp2((block >> 3).double() - 31) * (1 + (block & 7).double() / 8)
    return torch.where(block > 0, ratio * top, 0.0)


def reference_decode(key: str, codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """float64 values, shaped like the parameter, of AdaBalance4bit's codes of state ``key``."""
    scale = reference_scales(scale)
    scale = scale.repeat_interleave(codes.shape[-2] // scale.shape[-1], dim=-1)  # shared scales
    nibble = _unpack(codes)
    if key == "exp_avg":
        value = SIGNED_MAGNITUDES[nibble & 7]
        value = torch.where(nibble >= 8, -value, value)
    elif key == "exp_avg_lr":
        e, m = (nibble + 1) // 4, (nibble + 1) % 4
        value = torch.exp2(e.double() - 4) * (1 + m.double() / 4)
    else:
        e, m = (nibble + 1) // 2, (nibble + 1) % 2
        value = torch.exp2(e.double() - 8) * (1 + m.double() / 2)
    return (value * scale.unsqueeze(-1)).flatten(-2)


def state_values(state: dict, key: str) -> torch.Tensor:
    return reference_decode(key, state[key], state[key + "_scale"])


def _scale_per_element(state: dict, key: str, param: torch.Tensor) -> torch.Tensor:
    scale = reference_scales(state[key + "_scale"])
    return scale.repeat_interleave(param.shape[-1] // scale.shape[-1], dim=-1)


def _params(seed: int = 0) -> list[torch.nn.Parameter]:
    torch.manual_seed(seed)
    shapes = [(64, 128), (32, 256), (96, 96), (128,)]  # 96: blocks of 32; (128,): fp32 state
    return [torch.nn.Parameter(torch.randn(shape)) for shape in shapes]


def _train(params: list[torch.nn.Parameter], optimizer, steps: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator) * 1e-2
        optimizer.step()


def _saved(optimizer) -> dict:
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    return torch.load(buffer)


def test_block_scales_are_one_byte_rounded_up_within_an_eighth_and_each_row_its_own() -> None:
    from adabalance_hf.optim._codecs import pack_byte_scales

    generator = torch.Generator().manual_seed(0)
    exponents = torch.randint(-60, 20, (64, 1), generator=generator).float()  # rows far apart
    maxima = torch.rand(64, 24, generator=generator) * torch.exp2(exponents)
    maxima[:, 3] *= 2.0**-35  # below the smallest code of their row
    maxima[5] = 0.0  # a row of zeros
    maxima[6, 7] = 0.0  # a block of zeros
    scales, stored = pack_byte_scales(maxima)
    assert stored.dtype == torch.uint8 and stored.shape == (64, 25)
    assert torch.equal(scales.double(), reference_scales(stored))  # what is stored is used
    top = torch.exp2(torch.ceil(torch.log2(maxima.double().amax(-1, keepdim=True))))
    floor = top * 2.0**-30
    wide = maxima.double() >= floor
    assert (scales.double() >= maxima.double()).all()  # no code overflows its block
    assert (scales.double()[wide] <= maxima.double()[wide] * 1.125).all()
    assert torch.equal(
        scales.double()[~wide & (maxima > 0)], floor.expand_as(scales)[~wide & (maxima > 0)]
    )
    assert (scales[5] == 0).all() and scales[6, 7] == 0
    # A row's bytes depend on that row alone: a tensor sharded by rows stores what it would whole.
    halves = [pack_byte_scales(half)[1] for half in maxima.split(32)]
    assert torch.equal(torch.cat(halves), stored)


def test_codes_are_packed_two_per_byte_and_decode_as_documented() -> None:
    params = _params()
    optimizer = AdaBalance4bit(params, lr=1e-2, beta3=0.9, **EAGER)
    _train(params, optimizer, 3, seed=0)
    state = optimizer.state[params[0]]
    for key in KEYS:  # blocks of 32 (the default), 16 bytes each
        assert state[key].dtype == torch.uint8 and state[key].shape == (64, 4, 16), key
        assert state[key + "_scale"].dtype == torch.uint8
    # A byte per block (v: per two blocks) and the row's.
    scale_shapes = {key: state[key + "_scale"].shape for key in KEYS}
    assert scale_shapes == {"exp_avg": (64, 5), "exp_avg_sq": (64, 3), "exp_avg_lr": (64, 5)}
    odd = optimizer.state[params[2]]  # 3 blocks a row: v has a scale per block
    assert odd["exp_avg"].shape == odd["exp_avg_sq"].shape == (96, 3, 16)
    assert odd["exp_avg_sq_scale"].shape == (96, 4)
    for key in KEYS:
        decoded = decoded_state(state, key)
        torch.testing.assert_close(decoded.double(), state_values(state, key), rtol=1e-7, atol=0)
    signs = _unpack(state["exp_avg"]) >= 8
    assert 0.3 < signs.float().mean() < 0.7  # random gradients: both signs are stored


@pytest.mark.parametrize(
    "options",
    [{}, {"amsbound": True, **EAGER}, {"weight_decay": 0.1, "maximize": True, **EAGER},
     {"weight_decay": 0.1, "decoupled_weight_decay": True, **EAGER}],
    ids=["defaults", "amsbound", "l2_maximize", "decoupled"],
)  # fmt: skip
def test_one_step_matches_the_float64_oracle_started_from_the_decoded_state(options) -> None:
    """From any 4-bit state, a step moves each parameter as the spec moves it (fp32 accuracy)
    and stores each state within one code step of the spec's."""
    params = _params()
    hyper = dict(lr=1e-2, betas=(0.9, 0.999), beta3=0.9, final_lr=0.1, gamma=1e-2, eps=1e-8,
                 weight_decay=0.0)  # fmt: skip
    hyper.update({k: v for k, v in options.items() if k != "fused"})
    optimizer = AdaBalance4bit(params, **{**hyper, "fused": options.get("fused", True)})
    _train(params, optimizer, 4, seed=1)
    quantized = params[:3]
    oracle = OracleAdaBalance()
    oracle.add_group(quantized, hyper["lr"])
    amsbound = options.get("amsbound", False)
    for tensor, param in zip(oracle.groups[0].tensors, quantized, strict=True):
        state = optimizer.state[param]
        tensor.step = int(state["step"])
        tensor.m, tensor.v, tensor.s = (state_values(state, key) for key in KEYS)
        tensor.v_max = state_values(state, "max_exp_avg_sq") if amsbound else None
    generator = torch.Generator().manual_seed(2)
    grads = [torch.randn(p.shape, generator=generator) * 1e-2 for p in params]
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    optimizer.step()
    oracle.step(0, grads[:3], {**hyper, "amsbound": amsbound})

    for tensor, param in zip(oracle.groups[0].tensors, quantized, strict=True):
        moved = tensor.param - param.detach().double()
        assert moved.abs().max() <= 1e-6 * tensor.param.abs().max(), "parameter update"
        state = optimizer.state[param]
        for key, expected in {"exp_avg": tensor.m, "exp_avg_sq": tensor.v,
                              "exp_avg_lr": tensor.s}.items():  # fmt: skip
            scale = _scale_per_element(state, key, param)
            error = (state_values(state, key) - expected).abs()
            # Stochastic rounding: within one code step, a step being at most half the lower
            # code (E2M1, 1 mantissa bit) or a quarter (2 mantissa bits); below the first code,
            # 0 or the first code (1/8; 1.5 * 2**-8 and 1.25 / 16 with no zero code).
            if key == "exp_avg":
                bound = expected.abs() / 2 + scale / 8
            elif key == "exp_avg_sq":
                bound = expected.abs() / 2 + scale * 2.0**-7
            else:
                bound = expected.abs() / 4 + scale * 1.25 / 16
            assert (error <= bound * (1 + 1e-5)).all(), key


def test_compiled_and_eager_kernels_agree() -> None:
    results = []
    for fused in (True, False):
        params = _params()
        optimizer = AdaBalance4bit(params, lr=1e-2, beta3=0.9, gamma=1e-2, fused=fused)
        _train(params, optimizer, 10, seed=2)
        results.append((params, optimizer))
    (compiled, compiled_opt), (eager, eager_opt) = results
    for a, b in zip(compiled, eager, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        for key in KEYS:
            codes_a, codes_b = compiled_opt.state[a][key], eager_opt.state[b][key]
            if codes_a.dtype == torch.float32:
                continue
            codes_a, codes_b = _unpack(codes_a), _unpack(codes_b)
            differ = (codes_a.int() - codes_b.int()).abs()
            assert differ.bool().float().mean() < 1e-3, key


def test_one_compiled_graph_serves_every_shape_and_matches_eager() -> None:
    """One row (a 1-D tensor), one block a row, a 3-D tensor, rows = blocks = bytes a block:
    each would otherwise make dynamo compile the kernel again (minutes with an empty cache)."""
    from torch._dynamo.utils import counters

    shapes = [(4096,), (128, 32), (4, 8, 256), (16, 512)]
    before = counters["stats"]["unique_graphs"]
    results = []
    for fused in (True, False):
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(shape)) for shape in shapes]
        optimizer = AdaBalance4bit(params, lr=1e-2, beta3=0.9, gamma=1e-2, fused=fused)
        _train(params, optimizer, 3, seed=9)
        assert all(optimizer.state[p]["exp_avg"].dtype == torch.uint8 for p in params)
        results.append(params)
    assert counters["stats"]["unique_graphs"] - before <= 1  # 0 if an earlier test compiled it
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _regression(optimizer_cls: type, steps: int = 150, **kwargs: object) -> float:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(128, 128), torch.nn.Tanh(), torch.nn.Linear(128, 8))
    x = torch.randn(128, 128)
    y = torch.sin(x[:, :8] * 2)
    optimizer = optimizer_cls(model.parameters(), lr=3e-3, beta3=0.9, gamma=1e-3, **kwargs)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
    return loss.item()


def test_trains_close_to_fp32_state_on_a_regression() -> None:
    fp32 = _regression(AdaBalance)
    four_bit = _regression(AdaBalance4bit, **EAGER)
    start = _regression(AdaBalance, steps=1)
    assert fp32 < 0.01 * start
    assert abs(four_bit - fp32) <= 0.02 * start, (four_bit, fp32, start)


def test_state_is_at_most_1_6_bytes_per_parameter_at_bert_base_width() -> None:
    """One BERT-base layer (width 768, feed-forward 3072, its biases and norms in fp32) with a
    small vocabulary (about BERT-base's share of small tensors); 1.578125 for the codes and
    block scales (three states at half a byte, a byte per 32 elements for m and s, per 64 for
    v), a byte a row for each state, the rest fp32 state."""
    from _hf_helpers import tiny_bert

    model = tiny_bert(vocab=4096, hidden=768, intermediate=3072, layers=1, max_positions=512)
    numel = sum(p.numel() for p in model.parameters())
    per_param = {}
    for cls in (AdaBalance4bit, AdaBalance8bit):
        optimizer = cls(model.parameters(), lr=1e-4, **EAGER)
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        optimizer.step()
        per_param[cls] = optimizer_state_bytes(optimizer) / numel
    assert 1.578125 < per_param[AdaBalance4bit] <= 1.6, per_param
    assert per_param[AdaBalance4bit] < 0.52 * per_param[AdaBalance8bit], per_param


def test_a_checkpoint_with_a_v_scale_per_block_is_re_encoded_with_one_per_two_blocks() -> None:
    """The layout before v's shared scales (a scale per block for every state) loads: v is
    re-encoded (rounded to nearest) with a scale per two blocks, each value within half a code
    step of what was saved, and the run goes on."""

    class ScalePerBlock(AdaBalance4bit):
        scale_groups: ClassVar[dict[str, int]] = {}

    params = _params()
    saver = ScalePerBlock(params, lr=1e-2, beta3=0.9, **EAGER)
    _train(params, saver, 3, seed=7)
    assert saver.state[params[0]]["exp_avg_sq_scale"].shape == (64, 5)
    loader = AdaBalance4bit(params, lr=1e-2, beta3=0.9, **EAGER)
    loader.load_state_dict(_saved(saver))
    state, saved = loader.state[params[0]], saver.state[params[0]]
    assert state["exp_avg_sq_scale"].shape == (64, 3) and state["exp_avg_scale"].shape == (64, 5)
    before, after = state_values(saved, "exp_avg_sq"), state_values(state, "exp_avg_sq")
    # e3m1 to nearest: within a quarter of the value, or below the shared scale's smallest code
    floor = 1.5 * 2.0**-8 * _scale_per_element(state, "exp_avg_sq", params[0])
    assert ((after - before).abs() <= torch.maximum(before.abs() / 4, floor)).all()
    _train(params, loader, 2, seed=8)
    assert all(torch.isfinite(p).all() for p in params)
    back = ScalePerBlock(params, lr=1e-2, beta3=0.9, **EAGER)
    back.load_state_dict(_saved(loader))
    assert back.state[params[0]]["exp_avg_sq_scale"].shape == (64, 5)


def test_a_resumed_run_ends_bitwise_where_the_uninterrupted_one_ends() -> None:
    params = _params()
    optimizer = AdaBalance4bit(params, lr=1e-2, beta3=0.9)
    _train(params, optimizer, 5, seed=3)
    saved_state, saved_params = _saved(optimizer), [p.detach().clone() for p in params]
    _train(params, optimizer, 5, seed=4)

    resumed = [torch.nn.Parameter(p.clone()) for p in saved_params]
    resumed_optimizer = AdaBalance4bit(resumed, lr=1e-2, beta3=0.9)
    resumed_optimizer.load_state_dict(saved_state)
    _train(resumed, resumed_optimizer, 5, seed=4)
    for a, b in zip(params, resumed, strict=True):
        assert torch.equal(a, b)
    for key in KEYS:
        assert torch.equal(
            optimizer.state[params[0]][key], resumed_optimizer.state[resumed[0]][key]
        )


@pytest.mark.parametrize("source", [AdaBalance, AdaBalance8bit])
def test_fp32_and_8bit_checkpoints_load_into_it_and_back(source) -> None:
    params = _params()
    saver = source(params, lr=1e-2, **({} if source is AdaBalance else EAGER))
    _train(params, saver, 5, seed=5)
    saved_values = {key: decoded_state(saver.state[params[0]], key) for key in KEYS}
    four_bit = AdaBalance4bit(params, lr=1e-2, **EAGER)
    four_bit.load_state_dict(_saved(saver))
    state = four_bit.state[params[0]]
    for key in KEYS:
        assert state[key].dtype == torch.uint8 and state[key].dim() == 3
        expected = saved_values[key].double()
        scale = _scale_per_element(state, key, params[0])
        error = (state_values(state, key) - expected).abs()
        # Rounded to nearest: within half a code step, and the values below the first code.
        bound = {
            "exp_avg": expected.abs() / 4 + scale * 3 / 32,
            "exp_avg_sq": expected.abs() / 4 + scale * 2.0**-7,
            "exp_avg_lr": expected.abs() / 8 + scale * 1.25 / 16,
        }[key]
        assert (error <= bound * (1 + 1e-6)).all(), key
    _train(params, four_bit, 2, seed=6)  # steps on the converted state

    back = source(params, lr=1e-2, **({} if source is AdaBalance else EAGER))
    back.load_state_dict(_saved(four_bit))
    state = back.state[params[0]]
    decoded = state_values(four_bit.state[params[0]], "exp_avg")
    if source is AdaBalance:
        assert {key: state[key].dtype for key in KEYS} == dict.fromkeys(KEYS, torch.float32)
        torch.testing.assert_close(state["exp_avg"].double(), decoded, rtol=1e-7, atol=0)
    else:  # re-encoded in 8 bits, to nearest: within 1/16 of each value
        assert state["exp_avg"].dtype == torch.int8
        again = decoded_state(state, "exp_avg").double()
        assert ((again - decoded).abs() <= decoded.abs() / 16 + 1e-12).all()


@pytest.mark.parametrize(
    ("key", "damage"),
    [("exp_avg", lambda codes: codes[..., :8]),
     ("exp_avg_sq_scale", lambda scale: torch.cat([scale, scale[..., :1]], dim=-1))],
    ids=["codes_cut", "v_scales_not_dividing_the_blocks"],
)  # fmt: skip
def test_a_damaged_4bit_state_dict_is_refused_before_anything_loads(key, damage) -> None:
    params = _params()
    optimizer = AdaBalance4bit(params, lr=1e-2, **EAGER)
    _train(params, optimizer, 2, seed=8)
    state_dict = _saved(optimizer)
    state_dict["state"][0][key] = damage(state_dict["state"][0][key])
    before = optimizer.state[params[0]]["exp_avg"].clone()
    scale = key if key.endswith("_scale") else key + "_scale"
    with pytest.raises(ValueError, match=rf"'{scale}'.*block_size // scale_group"):
        optimizer.load_state_dict(state_dict)
    assert torch.equal(optimizer.state[params[0]]["exp_avg"], before)


@pytest.mark.parametrize("block_size", [0, 33, 2.5, True])
def test_an_odd_or_invalid_block_size_is_an_error_naming_it(block_size) -> None:
    with pytest.raises(ValueError, match=r"AdaBalance4bit: Invalid block_size: .* positive even"):
        AdaBalance4bit(_params(), block_size=block_size)


@pytest.mark.parametrize("master_weights", [True, False])
def test_bf16_parameters_step_with_and_without_master_weights(master_weights) -> None:
    torch.manual_seed(0)
    param = torch.nn.Parameter(torch.randn(64, 128).to(torch.bfloat16))
    start = param.detach().clone()
    optimizer = AdaBalance4bit([param], lr=1e-2, master_weights=master_weights,
                               bf16_stochastic_round=not master_weights, **EAGER)  # fmt: skip
    for _ in range(3):
        param.grad = torch.randn_like(param)
        optimizer.step()
    state = optimizer.state[param]
    assert state["exp_avg"].dtype == torch.uint8 and not torch.equal(param, start)
    if master_weights:
        assert state["master_param"].dtype == torch.float32
        assert torch.equal(param, state["master_param"].to(torch.bfloat16))
    else:
        assert "master_param" not in state


# The non-finite skip and GradScaler tests run for both classes in tests/test_optim_8bit.py.


# Each stochastically rounded state, and a first-step gradient pattern that puts its values at
# 0.3 of their block's largest, between two codes of every code in use: rounded to nearest, the
# stored mean would be off by 4% (8-bit) to 17% (4-bit); stochastically it is unbiased.
ROUNDING_CASES = [
    (cls, key) for cls in (AdaBalance8bit, AdaBalance4bit) for key in ("exp_avg_sq", "exp_avg_lr")
] + [(AdaBalance4bit, "exp_avg")]


@pytest.mark.parametrize(("cls", "key"), ROUNDING_CASES, ids=lambda x: getattr(x, "__name__", x))
def test_each_stochastically_rounded_state_is_stored_unbiased(cls, key) -> None:
    hyper = dict(lr=1e-2, betas=(0.9, 0.999), beta3=0.9, final_lr=0.1, gamma=1e-2, eps=1e-8,
                 weight_decay=0.0)  # fmt: skip
    # m is linear in g, v quadratic, s falls with |g|: each block's largest m, v or s.
    fill, peak = {"exp_avg": (0.3, 1.0), "exp_avg_sq": (0.3**0.5, 1.0)}.get(key, (1.0, 0.3))
    grad = torch.full((64, 128), fill)
    largest = torch.zeros(64, 128, dtype=torch.bool)
    largest[:, ::32] = True  # the first element of every block of 32 (and so of 128)
    grad[largest] = peak
    param = torch.nn.Parameter(torch.zeros(64, 128))
    optimizer = cls([param], **hyper, **EAGER)
    param.grad = grad.clone()
    optimizer.step()
    oracle = OracleAdaBalance()
    oracle.add_group([param.detach()], hyper["lr"])
    oracle.step(0, [grad], {**hyper, "amsbound": False})
    tensor = oracle.groups[0].tensors[0]
    expected = {"exp_avg": tensor.m, "exp_avg_sq": tensor.v, "exp_avg_lr": tensor.s}[key][~largest]
    stored = decoded_state(optimizer.state[param], key).double()[~largest]
    assert abs(stored.mean().item() / expected.mean().item() - 1) < 0.005, key
