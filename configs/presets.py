"""
# Defaults and named presets of the evidential experiment

`DEFAULTS` are the values every run starts from; a preset lists only what it changes, each value
with the reason (and source) next to it, and the command line overrides both.
"""
from configs.cli import Preset

# Every option has an explicit default, so a run's configs.yaml always names what was used.
# The defaults are the `tuned` preset below (issue 8): chosen on a held-out 10% of the training set.
DEFAULTS = {
    'dataset': 'mnist',
    'model': 'lenet',
    'outputs_to_evidence': 'exp_linear',
    'loss_func': 'cross_entropy_bayes_risk',
    'kl_schedule': 'constant',
    'kl_coef': 0.01,
    'optimizer.optimizer': 'Adam',
    'optimizer.learning_rate': 1e-3,
    'optimizer.weight_decay': 0.,
    'lr_schedule': 'cosine',
    'augment_shift': 2.,
    'augment_rotate': 10.,
    'outlier_coef': 0.03,
    'holdout': 0.1,
    'epochs': 20,
}

PRESETS = {
    'labml': Preset(
        "labml_nn's evidential MNIST tutorial (labml_nn/uncertainty/evidence/experiment.py)",
        {
            'loss_func': 'squared_error_bayes_risk',
            'outputs_to_evidence': 'softplus',
            'kl_schedule': 'piecewise',
            'kl_div_coef_schedule': [(0, 0.), (0.2, 0.01), (1, 1.)],
            'optimizer.optimizer': 'Adam',
            'optimizer.learning_rate': 1e-3,
            'optimizer.weight_decay': 5e-3,
            'dropout': 0.5,
            'epochs': 10,
            'train_batch_size': 64,
            'holdout': 0.0,
            'lr_schedule': 'constant',
            'augment_shift': 0.,
            'augment_rotate': 0.,
            'outlier_coef': 0.,
        },
        {
            'loss_func': "main(): 'loss_func': 'squared_error_bayes_risk'",
            'outputs_to_evidence': "main(): 'outputs_to_evidence': 'softplus'",
            'kl_div_coef_schedule': 'Configs.kl_div_coef_schedule',
            'optimizer.learning_rate': "main(): 'optimizer.learning_rate': 0.001",
            'optimizer.weight_decay': "main(): 'optimizer.weight_decay': 0.005 (labml_nn Adam, decoupled)",
            'dropout': "main(): 'dropout': 0.5",
            'epochs': 'MNISTConfigs.epochs = 10',
            'train_batch_size': "labml_nn MNISTConfigs train_batch_size = 64",
            'holdout': 'labml_nn validates on the test set',
            'lr_schedule': 'labml_nn keeps the learning rate constant',
            'augment_shift': 'labml_nn does not augment',
            'outlier_coef': 'labml_nn trains on MNIST only',
        }),
    'paper': Preset(
        'Sensoy, Kaplan & Kandemir, NeurIPS 2018 (EDL), MNIST experiment',
        {
            'loss_func': 'squared_error_bayes_risk',
            'outputs_to_evidence': 'relu',
            'kl_schedule': 'paper',
            'optimizer.optimizer': 'Adam',
            'optimizer.learning_rate': 1e-3,
            'optimizer.weight_decay': 5e-3,
            'dropout': 0.5,
            'train_batch_size': 1000,
            'epochs': 50,
            'lr_schedule': 'constant',
            'augment_shift': 0.,
            'augment_rotate': 0.,
            'outlier_coef': 0.,
            'holdout': 0.0,
        },
        {
            'loss_func': 'Sec. 3: Eq. 5 (sum of squares) is the loss used in the experiments',
            'outputs_to_evidence': 'Sec. 3/4: ReLU output layer for non-negative evidence',
            'kl_schedule': 'Sec. 4: lambda_t = min(1, t/10), t the epoch index',
            'optimizer.optimizer': 'Sec. 5: Adam',
            'optimizer.learning_rate': "authors' TensorFlow notebook: Adam's default 1e-3",
            'optimizer.weight_decay': "authors' notebook: L2 0.005 (here decoupled, as labml_nn's Adam does)",
            'dropout': 'Sec. 5: LeNet with 500 hidden units and dropout',
            'train_batch_size': "authors' notebook: batch size 1000",
            'epochs': "authors' notebook: 50 epochs",
            'lr_schedule': 'constant learning rate',
            'augment_shift': 'no augmentation',
            'augment_rotate': 'no augmentation',
            'outlier_coef': 'the paper trains on MNIST only',
            'holdout': 'the paper reports the test set; no model selection',
        }),
    'tuned': Preset(
        'the default: best uncertainty found on held-out data within ~2.5 CPU-minutes (see README)',
        {k: DEFAULTS[k] for k in ('outputs_to_evidence', 'loss_func', 'kl_schedule', 'kl_coef',
                                  'optimizer.weight_decay', 'lr_schedule', 'augment_shift', 'augment_rotate',
                                  'outlier_coef', 'holdout', 'epochs')},
        {
            'outputs_to_evidence': 'exp: evidence grows fast enough for sharp, calibrated p; softplus/relu were '
                                   'under-confident (NLL 0.17 vs 0.06 at 20 epochs); exp_linear, not the clamped exp: '
                                   'above a logit of 10 the clamp is a plateau on which u ranks inputs by their '
                                   'competing evidence (77% of digits sit on it); same held-out figures',
            'loss_func': 'Eq. 4 with exp matched or beat SSE, Type II ML and R-EDL on held-out accuracy and AURC; '
                         'I-EDL\'s Fisher loss was under-confident (held-out ECE 9%)',
            'kl_schedule': 'a small constant KL weight: chosen on held-out data (10% of training + Fashion-MNIST '
                           'train as OOD) over the paper ramp, off, 0.1 and 0.03 (README, Results)',
            'kl_coef': '0.01: held-out ECE 0.39% (paper ramp 1.55%), Fashion AUROC by u 0.990 (0.976), AURC 0.020% '
                       '(0.027%); off lost u\'s ranking of errors (AURC 0.86%); 0.005 detected OOD a little better '
                       'but calibrated and ranked errors worse on 2 of 3 seeds',
            'optimizer.weight_decay': 'no decay: the KL term already shrinks misleading evidence',
            'lr_schedule': 'cosine decay to 0 for the last points of accuracy',
            'augment_shift': 'random shifts of up to 2 px: the 10k training images are few',
            'augment_rotate': 'random rotations of up to 10 degrees, same reason',
            'outlier_coef': 'jigsaw-shuffled digits pulled towards no evidence, weight 0.03: held-out Fashion AUROC by u '
                            '0.9950 +- 0.0035 over 3 seeds (none: 0.9874 +- 0.0037), AURC 0.033% (0.066%); '
                            '0.01 / 0.1 / 0.3 and 4x4 tiles were no better (README, Results)',
            'holdout': 'validate on 10% of the training set; the test set is only for the final figure',
            'epochs': '20 epochs: ~130 s on 2 CPU cores with the outliers; 40 gave the same accuracy with worse AURC',
        }),
    'smoke': Preset(
        'a few seconds: one small epoch, for tests and trying the pipeline',
        {'epochs': 1, 'train_batch_size': 32, 'valid_batch_size': 256, 'log_interval': 2, 'holdout': 0.0,
         'augment_shift': 0., 'augment_rotate': 0.},
        {'epochs': 'one pass is enough to exercise every code path',
         'holdout': 'validate on the (synthetic) test split: tiny sets have little to hold out'}),
}
