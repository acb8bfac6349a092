"""
Run folders cannot be turned against their owner: a resume never writes into another run, evaluation never writes
through a symbolic link, a YAML alias bomb is refused in one line, and a hand-edited `experiment.json` is checked
like the command line before a resume touches anything.
"""
import json
import shutil

import pytest

from experiments import compare, evaluate
from experiments.train import main as train

BOMB = 'a: &a ["x","x","x","x","x","x","x","x","x"]\n' + ''.join(
    f'{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},'
    f'*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)}]\n' for i in range(8))  # 9**9 strings expanded


def _bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_resume_from_a_folder_elsewhere_is_refused_and_changes_no_run(smoke_run, tmp_path, capsys):
    run = smoke_run
    copy = tmp_path / 'elsewhere' / run.name
    shutil.copytree(run, copy)
    before, copy_before = _bytes(run), _bytes(copy)
    assert train('evidence_mnist', [f'resume={copy}', 'epochs=2']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'is not' in err[0] and str(run) in err[0]
    assert _bytes(run) == before and _bytes(copy) == copy_before
    # the run's own folder, by path or by uuid, resumes
    assert train('evidence_mnist', [f'resume={run}', 'epochs=2']) == 0


@pytest.mark.parametrize('edit, message', [
    ({'train_batch_size': 0}, 'train_batch_size=0'),
    ({'no_such_key': 1}, "unknown key 'no_such_key'"),
    ({'epochs': [1, 2]}, 'epochs'),
])
def test_a_hand_edited_experiment_json_is_checked_before_a_resume(smoke_run, capsys, edit, message):
    run = smoke_run
    values = json.loads((run / 'experiment.json').read_text())
    (run / 'experiment.json').write_text(json.dumps({**values, **edit}))
    before = _bytes(run)
    assert train('evidence_mnist', [f'resume={run.name}', 'epochs=2']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'experiment.json' in err[0] and message in err[0] and 'Traceback' not in err[0]
    assert _bytes(run) == before


def test_evaluation_never_writes_through_a_symbolic_link(smoke_run, tmp_path, capsys):
    run = smoke_run
    figure_target, log_target = tmp_path / 'precious.png', tmp_path / 'precious.log'
    figure_target.write_bytes(b'mine')
    log_target.write_text('mine\n')
    (run / 'eval_reliability.png').symlink_to(figure_target)
    (run / 'log.jsonl').unlink()
    (run / 'log.jsonl').symlink_to(log_target)
    assert evaluate.main([str(run), '--fgsm-samples', '0', '--pgd-samples', '0', '--missing-samples', '0']) == 0
    assert figure_target.read_bytes() == b'mine' and log_target.read_text() == 'mine\n'
    assert not (run / 'eval_reliability.png').is_symlink()  # replaced by the new figure
    assert (run / 'eval_reliability.png').read_bytes()[:4] == b'\x89PNG'
    assert 'symbolic link' in capsys.readouterr().err


def test_a_yaml_alias_bomb_is_one_line_and_exit_2(smoke_run, workdir, capsys):
    run = smoke_run
    (run / 'configs.yaml').write_text(BOMB)
    assert len(BOMB) < 700
    # its own files only
    assert evaluate.main([str(run), '--fgsm-samples', '0', '--pgd-samples', '0', '--missing-samples', '0']) == 0
    (run / 'indicators.yaml').write_text(BOMB)  # appended to by the evaluation: left unchanged, with a note
    assert evaluate.main([str(run), '--fgsm-samples', '0', '--pgd-samples', '0', '--missing-samples', '0']) == 0
    assert (run / 'indicators.yaml').read_text() == BOMB and 'indicators.yaml left unchanged' in capsys.readouterr().err
    assert compare.main([str(run), '--out', str(workdir / 'cmp')]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'YAML aliases are refused' in err[0]


def test_resume_of_a_folder_holding_a_symbolic_link_is_refused(smoke_run, tmp_path, capsys):
    run = smoke_run
    target = tmp_path / 'precious.log'
    target.write_text('mine\n')
    (run / 'log.jsonl').unlink()
    (run / 'log.jsonl').symlink_to(target)
    assert train('evidence_mnist', [f'resume={run.name}', 'epochs=2']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'log.jsonl' in err[0] and 'symbolic link' in err[0]
    assert target.read_text() == 'mine\n'
