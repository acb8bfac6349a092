"""`configs.compat.skip_dynamo_import`: processes that build optimizers do not pay for importing `torch._dynamo`."""
import subprocess
import sys
import textwrap

from tests.conftest import ROOT


def _python(code: str, *args: str, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-c', textwrap.dedent(code), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env={'PYTHONPATH': str(ROOT), 'PATH': '/usr/bin:/bin'})


OPTIMIZE = """
    import sys, torch
    from labml_nn.optimizers.adam import Adam  # the families' optimizer (torch's own import dynamo in step)
    {setup}
    w = torch.nn.Parameter(torch.tensor([3.0, -2.0]))
    opt = Adam([w], lr=0.1)
    opt.add_param_group({{'params': [torch.nn.Parameter(torch.zeros(1))]}})
    for _ in range(50):
        opt.zero_grad()
        (w ** 2).sum().backward()
        opt.step()
    state = opt.state_dict()
    opt.load_state_dict(state)
    print(patched, len(opt.param_groups), round(float(w.abs().max()), 3), 'torch._dynamo' in sys.modules)
"""


def test_optimizers_work_without_importing_dynamo_and_torch_would_import_it():
    patched = _python(OPTIMIZE.format(setup='from configs.compat import skip_dynamo_import\n'
                                            '    patched = skip_dynamo_import()'))
    plain = _python(OPTIMIZE.format(setup='patched = 0'))
    assert patched.returncode == 0 and plain.returncode == 0, patched.stderr + plain.stderr
    n, groups, left, dynamo = patched.stdout.split()
    assert int(n) >= 1 and groups == '2' and dynamo == 'False'
    # the same optimisation as torch's own path, which does import torch._dynamo (else the patch is dead code)
    assert plain.stdout.split()[1:] == [groups, left, 'True']
    assert float(left) < 0.5


def test_a_training_run_does_not_import_dynamo(workdir, synthetic_data_dir):
    done = _python("""
        import atexit, runpy, sys
        atexit.register(lambda: print('DYNAMO', 'torch._dynamo' in sys.modules))
        sys.argv = ['train', 'evidence_mnist', 'preset=smoke', 'data_dir=' + sys.argv[1]]
        runpy.run_module('experiments.train', run_name='__main__')
    """, str(synthetic_data_dir), cwd=workdir)
    assert done.returncode == 0, done.stderr[-3000:]
    assert 'DYNAMO False' in done.stdout
