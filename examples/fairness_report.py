"""
Fairness reports, group-aware model selection and fairlearn mitigation
======================================================================

The data is a SYNTHETIC credit-style table generated below (nothing real): a binary
sensitive attribute ``A`` (10 % minority), a label that depends on the features
differently in the two groups, and one feature that weakly leaks ``A``. A group-blind model
fits the majority and does worse on the minority.

1. dense ERM vs REST (90 % sparse, balanced group reweighting):
   :func:`~rest_fair.metrics.fairness_report` (a fairlearn ``MetricFrame``: accuracy,
   balanced accuracy, selection rate, TPR, FPR, counts) and its readable summary;
2. ``GridSearchCV`` over the reweighting strength with the worst-group scorer and
   metadata routing, so that the *estimator* receives ``groups`` (without routing it
   would only go to the splitter);
3. fairlearn's ``ThresholdOptimizer`` (demographic parity) on top of REST.

From the shell::

    python examples/fairness_report.py          # about half a minute on 2 CPU cores
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import sklearn
from fairlearn.postprocessing import ThresholdOptimizer
from sklearn.model_selection import GridSearchCV, StratifiedKFold, train_test_split

from rest_fair import RESTClassifier
from rest_fair.metrics import fairness_report, make_worst_group_scorer

# %%
# The data
# --------
# A function, so that the table is easy to regenerate with other sizes or seeds.


def make_data(n: int = 4000, seed: int = 0):
    """Synthetic table: 6 features, sensitive attribute A, binary label y."""
    rng = np.random.default_rng(seed)
    a = (rng.random(n) < 0.1).astype(int)  # 1 = minority
    X = rng.normal(size=(n, 6))
    X[:, 5] = a + 1.0 * rng.normal(size=n)  # a weak proxy of A
    # the label rule differs between the groups
    score = np.where(a == 0, 1.5 * X[:, 0] + X[:, 1], 1.5 * X[:, 2] - X[:, 1] + 0.5)
    y = (score + 0.5 * rng.normal(size=n) > 0).astype(int)
    return X.astype(np.float32), y, a


X, y, a = make_data()
X_tr, X_te, y_tr, y_te, a_tr, a_te = train_test_split(
    X, y, a, test_size=0.3, stratify=a * 2 + y, random_state=0
)
common = {
    "module": "mlp", "module_params": {"hidden_layer_sizes": (64, 64)},
    "max_epochs": 30, "batch_size": 128, "optimizer": "adam", "lr": 3e-3,
    "random_state": 0,
}
print(f"{len(y_tr)} training rows, {a_tr.sum()} of them in the minority group A=1")

# %%
# 1. Dense ERM vs REST
# --------------------
# ERM is group-blind; REST is 90 % sparse and draws both groups equally often.

erm = RESTClassifier(sparsity=0.0, upweight=None, **common).fit(X_tr, y_tr)
rest = RESTClassifier(sparsity=0.9, upweight="balanced", **common).fit(
    X_tr, y_tr, groups=a_tr
)
reports = {}
for name, clf in (("dense ERM (group-blind)", erm), ("REST 90% sparse + reweighting", rest)):
    reports[name] = fairness_report(clf, X_te, y_te, groups=a_te)
    print(f"--- {name} ---")
    print(reports[name])
    print()

# %%
# The ``by_group`` table of each report is a fairlearn ``MetricFrame``'s; plotted:

by_group = pd.DataFrame(
    {name: report.by_group["accuracy"] for name, report in reports.items()}
)
ax = (100 * by_group).plot.bar(figsize=(6, 3.4), rot=0)
ax.set_xticks(range(len(by_group)), [f"A={g}" for g in by_group.index])
ax.set_xlabel("")
ax.set_ylabel("test accuracy (%)")
ax.set_ylim(0, 100)
ax.set_title("Accuracy by group of the sensitive attribute")
ax.legend(fontsize=8, loc="lower right")
ax.grid(axis="y", alpha=0.3)
plt.tight_layout()
plt.show()

# %%
# 2. ``GridSearchCV`` with groups routed to fit and scorer
# ---------------------------------------------------------
# With metadata routing on, ``groups`` reaches both ``RESTClassifier.fit`` (for
# reweighting) and the worst-group scorer (for selection).

with sklearn.config_context(enable_metadata_routing=True):
    search = GridSearchCV(
        RESTClassifier(sparsity=0.9, **{**common, "max_epochs": 15}).set_fit_request(
            groups=True
        ),
        {"upweight": [None, 3.0, "balanced"]},
        scoring=make_worst_group_scorer(),
        cv=StratifiedKFold(n_splits=3, shuffle=True, random_state=0),
    )
    search.fit(X_tr, y_tr, groups=a_tr)
for params, score in zip(search.cv_results_["params"],
                         search.cv_results_["mean_test_score"], strict=True):
    print(f"  upweight={params['upweight']!s:9s} CV worst-group accuracy {score:.3f}")
print(f"  best: {search.best_params_}, groups seen by the refit: "
      f"{sorted(search.best_estimator_.groups_)}")

# %%
# 3. fairlearn's ``ThresholdOptimizer`` (demographic parity) on REST
# -------------------------------------------------------------------
# Post-processing equalises the selection rates; read the whole report to see what it
# does to the other metrics.

post = ThresholdOptimizer(
    estimator=RESTClassifier(sparsity=0.9, upweight="balanced", **common),
    constraints="demographic_parity",
    predict_method="predict_proba",
)
post.fit(X_tr, y_tr, sensitive_features=a_tr, groups=a_tr)  # groups= reaches REST's fit
y_post = post.predict(X_te, sensitive_features=a_te, random_state=0)
report = fairness_report(y=y_te, y_pred=y_post, groups=a_te)
print(report.summary.round(3).to_string())
print("disparities:", {k: round(v, 3) for k, v in report.disparities.items()})
