"""The Net1D FLOP walk against a hook-based count of a real forward pass."""

import pytest
import torch

from clef_model.flops import encoder_flops, hooked_flops, train_step_flops
from clef_model.net1d import build_encoder


@pytest.mark.parametrize("scale", ["small", "medium", "large"])
@pytest.mark.parametrize("length", [1000, 2500, 2501, 5000])
def test_walk_matches_hooks(scale, length):
    # Meta device: the hooks see real output shapes without allocating large's 296M weights.
    with torch.device("meta"):
        model = build_encoder(scale)
    assert encoder_flops(scale, length) == hooked_flops(model, length)


def test_hooks_on_cpu_equal_meta():
    model = build_encoder("small")
    with torch.device("meta"):
        meta = build_encoder("small")
    assert hooked_flops(model, 2500) == hooked_flops(meta, 2500)


def test_scales_ordered_and_training_is_three_forwards():
    small, medium, large = (encoder_flops(s, 2500) for s in ("small", "medium", "large"))
    assert 0 < small < medium < large
    assert train_step_flops("small", 2500, views=64) == 3 * 64 * small
    # Roughly linear in length: the convs dominate, the SE linears do not scale.
    assert 1.9 < encoder_flops("small", 5000) / small < 2.1


def test_bad_input_named():
    with pytest.raises(ValueError, match="unknown encoder scale 'tiny'"):
        encoder_flops("tiny", 2500)
    with pytest.raises(ValueError, match="view length"):
        encoder_flops("small", 0)
