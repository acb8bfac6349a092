"""
The reference contenders of `python -m experiments.benchmark`: the libraries' own code for what an app family
does, each run as its own process and printing one JSON dict — `labml_nn` (labml_nn's evidence experiment,
for `evidence`), `torch_uncertainty` (TorchUncertainty's Packed-Ensembles tutorial, for `packed`; it needs a
separate interpreter) and `pyro` (a Bayesian LeNet in Pyro, for `bayes`).
"""
