"""Judging models and samplers: likelihoods, sample-quality metrics, the digits judge, the
named problems the command line and the benchmarks run, and the benchmark helpers.

- :mod:`.likelihood`: exact log-likelihood through the PF-ODE, bits/dim;
- :mod:`.elbo`: the variational bound beside it;
- :mod:`.metrics`: sliced Wasserstein, MMD;
- :mod:`.digits_eval`: the shipped digits classifier and its FID;
- :mod:`.problems`: analytic mixtures, shipped models and checkpoints by name;
- :mod:`.benchmark`: solvers side by side at equal NFE.
"""
