"""
The README's headline comparison, over seeds: every registered family with its default settings × seeds 1, 2, 3
(and the evidential family's NatPN head and bf16 precision),
evaluated on the test set; trained on the data folder given as `data_dir=DIR` (the README's numbers come from a
10k-image MNIST subset), else on labml's data folder.

    python -m experiments.sweep sweeps/compare_all.py data_dir=DIR --dry-run     # the planned runs
    python -m experiments.sweep sweeps/compare_all.py data_dir=DIR --jobs 2      # long: 39 runs took 106 min on 2 CPU cores

`key=value` arguments are added to every run (`data_dir=...`, `dashboard=...`, `epochs=1` to try it quickly).
The table (`logs/sweeps/compare_all/comparison.md`) has the columns below; `sweep.json` has every metric of each run.
"""
from configs.registry import names

name = 'compare_all'
split = 'test'
runs = [(family, {'seed': [1, 2, 3]}) for family in names()] + [
    # the evidential family's density-based head (Natural Posterior Network) and its default under bf16 autocast
    ('evidence_mnist', {'model': ['natpn'], 'seed': [1, 2, 3]}),
    ('evidence_mnist', {'precision': ['bf16'], 'seed': [1, 2, 3]}),
]
columns = [
    'accuracy', 'nll', 'ece', 'aurc', 'misclassification_auroc',
    # Fashion-MNIST as OOD: by entropy (every family), by the evidential u, by the circuit's -log p(x), by DDU's
    # feature density -log q(z) and by SNGP's GP variance
    'ood/fashion_mnist/entropy/auroc', 'ood/fashion_mnist/entropy/fpr95',
    'ood/fashion_mnist/u/auroc', 'ood/fashion_mnist/neg_log_density/auroc',
    'ood/fashion_mnist/neg_log_feature_density/auroc', 'ood/fashion_mnist/gp_variance/auroc',
    'missing/0.2/accuracy', 'missing/0.5/accuracy',
    'train_s',
]
