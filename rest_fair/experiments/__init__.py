"""Experiments: configurations of :class:`rest_fair.RESTClassifier` trained, scored and recorded.

:mod:`~rest_fair.experiments.runner` is the experiment runner (results file, resume, local or
Dask runs, :mod:`~rest_fair.experiments.dask_backend`); :mod:`~rest_fair.experiments.run`
trains and scores one run of an :class:`~rest_fair.experiments.run.Experiment`, such as
``rest-fair bench``'s :class:`~rest_fair.benchmarks.BenchConfig` or ``rest-fair wilds``'
:class:`~rest_fair.wilds.experiment.WildsExperiment`.
"""
