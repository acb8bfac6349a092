"""
Does each method's epistemic uncertainty behave as it should as the training set grows? The evidential default,
its NatPN head, DDU and the deep ensemble trained on 1,000 / 2,000 / 5,000 images and on all 9,000 left after the
holdout (`train_size=0`), seed 1, evaluated on the test set with Fashion-MNIST as the OOD set. In distribution the
epistemic score should shrink with more data; out of distribution it should stay high.

    python -m experiments.sweep sweeps/train_size.py data_dir=DIR --fgsm-samples 0 --pgd-samples 0 \\
        --missing-samples 0 --mnist-c-samples 0 --jobs 2          # 16 runs: about 20 min on 2 CPU cores
    python -m experiments.learning_curve logs/sweeps/train_size    # the figure: train_size.png in that folder

The smaller training sets give fewer steps per epoch: every run trains its family's default epochs.
"""
name = 'train_size'
split = 'test'
sizes = [1000, 2000, 5000, 0]
runs = [
    ('evidence_mnist', {'train_size': sizes, 'seed': 1}),
    ('evidence_mnist', {'model': 'natpn', 'train_size': sizes, 'seed': 1}),
    ('ddu_mnist', {'train_size': sizes, 'seed': 1}),
    ('ensemble_mnist', {'train_size': sizes, 'seed': 1}),
]
columns = [
    'accuracy', 'nll', 'misclassification_auroc',
    'ood/fashion_mnist/u/auroc', 'ood/fashion_mnist/neg_log_feature_density/auroc',
    'ood/fashion_mnist/mutual_information/auroc', 'ood/fashion_mnist/entropy/auroc',
    'train_s',
]
