"""`precision=bf16`: forward passes and losses in bfloat16, everything kept in float32, refused where emulated."""
import math

import pytest
import torch

from evidential import precision
from evidential.precision import PrecisionError, bf16_unsupported, check_precision

CPU = torch.device('cpu')


@pytest.mark.parametrize('machine, flags, native', [
    ('x86_64', {'avx512f', 'avx512_bf16'}, True),
    ('x86_64', {'avx512f', 'amx_tile', 'amx_bf16'}, True),
    ('x86_64', {'avx2', 'avx512f', 'avx512bw'}, False),  # bf16 would be emulated with AVX512 float32 units
    ('x86_64', None, False),  # flags unreadable
    ('aarch64', {'bf16'}, False),
])
def test_native_bfloat16_is_read_from_the_cpu_flags(monkeypatch, machine, flags, native):
    monkeypatch.setattr(precision.platform, 'machine', lambda: machine)
    monkeypatch.setattr(precision, '_cpu_flags', lambda: flags)
    reason = bf16_unsupported(CPU)
    assert (reason is None) == native, reason
    if not native:
        with pytest.raises(PrecisionError, match=r'^precision=bf16: '):
            check_precision('bf16', CPU)
    check_precision('fp32', CPU)  # always fine


def test_this_machines_flags_are_read():
    flags = precision._cpu_flags()
    assert flags is None or 'fpu' in flags or not flags.isdisjoint({'sse2', 'neon', 'asimd'})


def test_bf16_where_it_would_be_emulated_is_one_line_exit_2_and_nothing_written(
        workdir, synthetic_data_dir, monkeypatch, capsys):
    from experiments.train import main as train
    monkeypatch.chdir(workdir)
    monkeypatch.setattr(precision.platform, 'machine', lambda: 'x86_64')
    monkeypatch.setattr(precision, '_cpu_flags', lambda: {'avx2'})
    code = train('evidence_mnist', ['preset=smoke', f'data_dir={synthetic_data_dir}', 'device=cpu', 'precision=bf16'])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith('error: precision=bf16: this CPU has neither'), err
    assert not (workdir / 'logs' / 'evidence_mnist').exists() or not any((workdir / 'logs' / 'evidence_mnist').iterdir())


@pytest.mark.skipif(bf16_unsupported(CPU) is not None, reason=f'no native bfloat16 here: {bf16_unsupported(CPU)}')
def test_a_bf16_run_computes_in_bfloat16_and_keeps_float32_state(workdir, synthetic_data_dir, monkeypatch):
    from configs.checkpoint import load_checkpoint
    from configs.lenet import LeNetExperimentConfigs
    from experiments.train import main as train
    monkeypatch.chdir(workdir)
    seen = []
    original = LeNetExperimentConfigs.training_step

    def recording(self, x, y, samples_seen, generator):
        outputs, loss, extras = original(self, x, y, samples_seen, generator)
        seen.append((self.precision, torch.is_autocast_enabled('cpu'), outputs.dtype))
        return outputs, loss, extras

    monkeypatch.setattr(LeNetExperimentConfigs, 'training_step', recording)
    results = {}
    for p in ('fp32', 'bf16'):
        assert train('evidence_mnist', ['preset=smoke', f'data_dir={synthetic_data_dir}', 'device=cpu',
                                        f'precision={p}']) == 0
    runs = sorted((workdir / 'logs' / 'evidence_mnist').iterdir(), key=lambda r: r.stat().st_mtime)
    for p, run in zip(('fp32', 'bf16'), runs):
        state = load_checkpoint(run)
        results[p] = state['history'][-1]
        # parameters and Adam's moments stay float32
        assert {t.dtype for t in state['model'].values() if t.is_floating_point()} == {torch.float32}
        moments = [v for s in state['optimizer']['state'].values() for v in s.values()
                   if torch.is_tensor(v) and v.numel() > 1]
        assert moments and {t.dtype for t in moments} == {torch.float32}
    # the bf16 run's forward passes ran under autocast and gave bfloat16 logits; the fp32 run's did not
    assert {s for s in seen if s[0] == 'fp32'} == {('fp32', False, torch.float32)}
    assert {s for s in seen if s[0] == 'bf16'} == {('bf16', True, torch.bfloat16)}
    # the same seed in both: bfloat16 rounding changes the numbers, not the result
    fp32, bf16 = results['fp32'], results['bf16']
    assert fp32['loss.train'] != bf16['loss.train']
    assert math.isclose(fp32['loss.train'], bf16['loss.train'], rel_tol=0.05)
    assert abs(fp32['accuracy.valid'] - bf16['accuracy.valid']) < 0.05


@pytest.mark.parametrize('decouple', [True, False])
def test_fused_adam_makes_labml_nn_adams_update(decouple):
    """`optimizer.optimizer=FusedAdam` against labml_nn's `Adam` (the presets' optimizer) on the same gradients."""
    from types import SimpleNamespace

    from labml_nn.optimizers import WeightDecay
    from labml_nn.optimizers.adam import Adam

    from configs.experiment import _fused_adam
    torch.manual_seed(0)
    ours = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(7))]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    settings = dict(learning_rate=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=5e-2, amsgrad=False)
    fused = _fused_adam(SimpleNamespace(parameters=ours, weight_decouple=decouple, weight_decay_absolute=False,
                                        **settings))
    labml = Adam(theirs, lr=1e-2, betas=(0.9, 0.999), eps=1e-8,
                 weight_decay=WeightDecay(5e-2, weight_decouple=decouple))
    for step in range(50):
        grads = [torch.randn_like(p) * (1 + step % 3) for p in ours]
        for params, opt in ((ours, fused), (theirs, labml)):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            opt.step()
    for a, b in zip(ours, theirs):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), (a - b).abs().max()
