"""One observed forward pass: modes restored, hooks removed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rest_fair._probe import probe_pass


def test_every_submodule_keeps_its_mode_and_the_hooks_go():
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    net.train()
    net[1].eval()  # a frozen batch norm inside a training network
    seen = []
    handle = net[3].register_forward_hook(lambda m, i, o: seen.append(m.training))
    probe_pass(net, torch.randn(5, 3), [handle])
    assert seen == [False]  # the pass ran in evaluation mode
    assert [m.training for m in net] == [True, False, True, True]
    assert net.training and not net[3]._forward_hooks


def test_modes_are_restored_when_the_pass_fails():
    net = nn.Sequential(nn.Linear(3, 4), nn.Dropout())
    net.train()
    with pytest.raises(RuntimeError):
        probe_pass(net, torch.randn(5, 7), [])
    assert all(m.training for m in net.modules())
