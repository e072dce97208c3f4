"""TrainState: the best-epoch copies, held by their copy until read."""

from __future__ import annotations

import torch
from torch import nn

from rest_fair.training import TrainState


class Copy:
    """A BestCopy that counts what it builds."""

    def __init__(self):
        self.built = []

    def module_state(self):
        self.built.append("state")
        return {"weight": torch.ones(2, 3), "bias": torch.zeros(2)}

    def masks(self):
        self.built.append("masks")
        return {"weight": torch.ones(2, 3, dtype=torch.bool)}

    def load_into(self, module):
        self.built.append("load")
        module.load_state_dict(self.module_state())


def test_a_kept_best_copy_builds_each_field_once_when_first_read():
    state, copy = TrainState(), Copy()
    state.keep_best((0.5, 0.9), 3, copy)
    assert (state.best_key, state.best_epoch, copy.built) == ((0.5, 0.9), 3, [])
    assert state.best_masks["weight"].all()
    assert copy.built == ["masks"]
    assert torch.equal(state.best_module_state["bias"], torch.zeros(2))
    assert state.best_module_state is state.best_module_state
    assert copy.built == ["masks", "state"] and "_pending" not in vars(state)
    assert state.state_dict()["best_masks"] is state.best_masks


def test_load_best_writes_a_pending_copy_and_setting_a_field_replaces_it():
    state, copy, module = TrainState(), Copy(), nn.Linear(3, 2)
    state.load_best(module)  # no best epoch yet: nothing
    state.keep_best((1,), 1, copy)
    state.best_masks = None  # stands for none
    assert state.best_masks == {} and copy.built == []
    state.load_best(module)
    assert copy.built == ["load", "state"] and torch.equal(module.weight, torch.ones(2, 3))
    state.best_module_state = {"weight": torch.full((2, 3), 2.0), "bias": torch.ones(2)}
    state.load_best(module)
    assert torch.equal(module.bias, torch.ones(2)) and copy.built == ["load", "state"]


def test_a_state_round_trips_through_its_state_dict():
    state = TrainState(epoch=2, best_module_state={"w": torch.ones(1)},
                       best_masks={"w": torch.tensor([True])})
    again = TrainState.from_state_dict(state.state_dict())
    assert again.epoch == 2 and torch.equal(again.best_module_state["w"], torch.ones(1))
    assert TrainState().best_module_state is None and TrainState().best_masks == {}
