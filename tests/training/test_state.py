"""TrainState: the best-epoch copies, held packed until read."""

from __future__ import annotations

import torch

from rest_fair.training import TrainState


def test_a_kept_best_copy_is_built_once_when_first_read():
    calls = []

    def unpack():
        calls.append(1)
        return {"w": torch.ones(2)}, {"w": torch.tensor([True, False])}

    state = TrainState()
    state.keep_best((0.5, 0.9), 3, unpack)
    assert (state.best_key, state.best_epoch, calls) == ((0.5, 0.9), 3, [])
    assert torch.equal(state.best_masks["w"], torch.tensor([True, False]))
    assert torch.equal(state.best_module_state["w"], torch.ones(2))
    assert calls == [1]
    assert state.state_dict()["best_module_state"] is state.best_module_state


def test_setting_one_best_copy_builds_and_keeps_the_other():
    state = TrainState()
    state.keep_best((1,), 1, lambda: ({"w": torch.zeros(1)}, {"w": torch.tensor([True])}))
    state.best_masks = None  # stands for none
    assert state.best_masks == {}
    assert torch.equal(state.best_module_state["w"], torch.zeros(1))


def test_a_state_round_trips_through_its_state_dict():
    state = TrainState(epoch=2, best_module_state={"w": torch.ones(1)},
                       best_masks={"w": torch.tensor([True])})
    again = TrainState.from_state_dict(state.state_dict())
    assert again.epoch == 2 and torch.equal(again.best_module_state["w"], torch.ones(1))
    assert TrainState().best_module_state is None and TrainState().best_masks == {}
