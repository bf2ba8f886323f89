import pytest
import torch

from edgewise.core.errors import EdgewiseError
from edgewise.models.qtensor import pack_gptq, unpack_gptq
from edgewise.quant.awq import block_error, clip_quantize, linear_error, output_error, search_scale
from edgewise.quant.gptq import gptq_quantize
from edgewise.quant.int4 import QuantSpec, effective_group_size, rtn


@pytest.mark.parametrize("zero_point", [True, False])
@pytest.mark.parametrize("bits", [4, 8])
def test_gptq_packing_round_trips(zero_point, bits):
    torch.manual_seed(0)
    w = torch.randn(64, 96)
    qt = rtn(w, QuantSpec(bits, 32, zero_point), 32)
    back = unpack_gptq(pack_gptq(qt, bits), bits)
    assert torch.equal(back.q, qt.q) and torch.equal(back.zero, qt.zero) and torch.equal(back.scale, qt.scale)
    assert back.group_size == 32
    assert int(qt.q.min()) >= 0 and int(qt.q.max()) <= 2**bits - 1
    assert torch.equal(qt.scale, qt.scale.half().float())  # scales are exactly fp16


def test_group_size_that_does_not_divide_is_halved():
    assert effective_group_size(576, 128) == 64
    assert effective_group_size(1536, 128) == 128
    with pytest.raises(EdgewiseError):
        effective_group_size(40, 32)


def test_clipping_and_gptq_beat_rtn_on_their_objective():
    torch.manual_seed(0)
    x = torch.randn(512, 128) * torch.linspace(0.1, 3, 128)  # uneven channel magnitudes
    w = torch.randn(64, 128)
    w[:, 5] *= 8  # an outlier column
    gram = x.t() @ x
    spec = QuantSpec(4, 32, True)
    base = output_error(rtn(w, spec, 32).dequantize() - w, gram)
    clipped = output_error(clip_quantize(w, gram, spec, 32).dequantize() - w, gram)
    gptq = output_error(gptq_quantize(w, gram, spec, 32).dequantize() - w, gram)
    assert clipped <= base
    assert gptq < base


class _MLP(torch.nn.Module):
    def __init__(self, hidden=128, inner=256):
        super().__init__()
        self.gate_proj = torch.nn.Linear(hidden, inner, bias=False)
        self.up_proj = torch.nn.Linear(hidden, inner, bias=False)
        self.down_proj = torch.nn.Linear(inner, hidden, bias=False)

    def forward(self, x):
        return self.down_proj(torch.nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


def test_awq_scale_search_protects_salient_input_channels():
    """With a few large-activation channels, the searched scale beats no scaling on both objectives, and the block
    objective leaves the module's weights as they were."""
    torch.manual_seed(0)
    mlp = _MLP()
    x = torch.randn(1024, 128)
    x[:, :4] *= 20  # salient channels
    spec, before = QuantSpec(4, 32, True), mlp.up_proj.weight.clone()
    weights = [mlp.gate_proj.weight, mlp.up_proj.weight]
    x_mean = x.abs().mean(0)
    for error in (linear_error(weights, x.t() @ x, spec, 32), block_error(mlp, [mlp.gate_proj, mlp.up_proj], x, spec, 32)):
        s = search_scale(weights, x_mean, error, 32)
        assert error(s) < 0.9 * error(torch.ones(128))
        assert s[:4].mean() > s[4:].mean()  # the salient channels are scaled up
    assert torch.equal(mlp.up_proj.weight, before)
