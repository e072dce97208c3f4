"""The authors' recipe and the switches it needs: init scaling and update timing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rest_fair import RESTClassifier
from rest_fair._validation import check_params
from rest_fair.callbacks import Callback
from rest_fair.recipes import authors_recipe

FAST = dict(max_epochs=3, batch_size=50, lr=0.05, random_state=0, device="cpu",
            sparse_compute="masked", module_params={"hidden_layer_sizes": (32,)})


class InitialWeights(Callback):
    def on_train_begin(self, net, *, run, **kwargs):
        self.weights = {n: p.detach().clone() for n, p in run.parts.module.named_parameters()}
        masks = run.parts.sparsity.masks
        self.masks = {n: masks.mask(n).clone() for n in masks.names}


class Updates(Callback):
    """Steps of the topology updates, and the weights new to a mask at each one."""

    def __init__(self):
        self.steps, self.new_weights = [], []
        self._before = None

    def on_batch_end(self, net, *, run, step, **kwargs):
        masks_set = run.parts.sparsity.masks
        masks = {n: masks_set.mask(n) for n in masks_set.names}
        if self.steps and self.steps[-1] == step:
            params = dict(run.parts.module.named_parameters())
            self.new_weights.append(torch.cat([
                params[n].detach()[m & ~self._before[n]] for n, m in masks.items()]))
        self._before = {n: m.clone() for n, m in masks.items()}

    def on_topology_update(self, net, *, step, **kwargs):
        self.steps.append(step)


def test_recipe_is_a_set_of_valid_estimator_parameters(data):
    X, y, g = data
    clf = RESTClassifier(sparsity=0.9, **authors_recipe("colored_mnist"))
    assert clf.get_params()["update_timing"] == "after_step"
    clf.set_params(**{**authors_recipe("bffhq"), **FAST, "update_interval": 5})
    clf.fit(X, y, groups=g)
    assert authors_recipe("bffhq")["lr"] == 0.001  # FAST's lr overrode it for this fit
    assert clf.n_topology_updates_ > 0
    with pytest.raises(ValueError, match="dataset must be one of"):
        authors_recipe("imagenet")
    for bad in (0, -1, float("nan"), True, "x"):
        with pytest.raises(ValueError, match=r"upweight must be a number in \(0, inf\)"):
            authors_recipe(upweight=bad)


def test_rescale_init_false_keeps_the_initial_weights_unscaled(data):
    X, y, g = data
    seen = {}
    for rescale in (True, False):
        cb = InitialWeights()
        RESTClassifier(sparsity=0.9, rescale_init=rescale, **{**FAST, "max_epochs": 1},
                       callbacks=[cb]).fit(X, y, groups=g)
        seen[rescale] = cb
    for name, mask in seen[False].masks.items():
        density = mask.float().mean().item()
        assert torch.equal(mask, seen[True].masks[name])
        scaled, plain = seen[True].weights[name][mask], seen[False].weights[name][mask]
        torch.testing.assert_close(scaled, plain / math.sqrt(density))


def test_after_step_updates_fall_on_interval_ends_and_start_untrained(data):
    X, y, g = data
    params = dict(sparsity=0.9, update_interval=4, update_end=1.0, **FAST)
    after, middle = Updates(), Updates()
    RESTClassifier(update_timing="after_step", callbacks=[after], **params).fit(X, y, groups=g)
    RESTClassifier(callbacks=[middle], **params).fit(X, y, groups=g)
    assert after.steps and all(step % 4 == 0 for step in after.steps)
    assert middle.steps and all(step % 4 == 2 or (step - 1) % 4 == 2 for step in middle.steps)
    # after the optimizer step, weights new to a mask are still exactly zero at the end of
    # the step; updated before it, the step already trained them
    assert len(after.new_weights) == len(after.steps)
    assert all(w.numel() > 0 for w in after.new_weights)
    assert all(torch.all(w == 0) for w in after.new_weights)
    assert any(torch.any(w != 0) for w in middle.new_weights)


def test_update_timing_is_checked(data):
    X, y, g = data
    with pytest.raises(ValueError, match="update_timing"):
        RESTClassifier(update_timing="end", **FAST).fit(X, y, groups=g)
    with pytest.raises(ValueError, match="rescale_init"):
        RESTClassifier(rescale_init="no", **FAST).fit(X, y, groups=g)


def test_recipe_fits_without_nan(data):
    X, y, g = data
    clf = RESTClassifier(sparsity=0.95, **{**authors_recipe(), **FAST, "update_interval": 3})
    clf.fit(X, y, groups=g)
    assert np.isfinite(clf.predict_proba(X)).all()
    assert clf.n_topology_updates_ > 0


def test_the_study_has_the_recipe_as_rows_that_search_only_the_optimisation():
    from rest_fair.benchmarks.study import STUDY_METHODS

    row = STUDY_METHODS["rest_authors_0.9"]
    fixed = row.fixed()
    recipe = authors_recipe()
    assert fixed == {k: recipe[k] for k in ("rescale_init", "drop_fraction", "drop_schedule",
                                           "update_interval", "update_end", "update_timing")}
    assert row.sparsity == 0.9 and row.selection == "worst_group"
    check_params(RESTClassifier(**fixed))
