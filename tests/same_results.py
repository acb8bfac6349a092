"""
Proves that a refactor changed no number: trains and evaluates every family at two commits, then diffs.

    python tests/same_results.py BASE [HEAD] [--data-dir DIR] [--fgsm-samples N] [--missing-samples N]
                                 [--out DIR] [--no-cache] [--unordered KEY]

BASE and HEAD are commits or refs; HEAD defaults to this repository's working tree as it is (uncommitted
changes and untracked files count). A commit is checked out with `git worktree add --detach` into a
temporary folder (removed at the end). For every family registered in that tree's `configs/registry.py`, one
after another, with a progress line each:

    python -m experiments.train FAMILY preset=smoke seed=1 device=cpu data_dir=DIR
    python -m experiments.evaluate RUN_FOLDER --fgsm-samples 200 --missing-samples 200 --device cpu --data-dir DIR

run from a temporary project folder (its own `.labml.yaml`, so runs land there) with PYTHONPATH set to the
tree, one thread (OMP/MKL/OPENBLAS_NUM_THREADS=1: float sums then have one order), PYTHONHASHSEED=0 and no
dashboard. `evaluation.json` and `predictions.npz` of each family are copied to OUT/base/FAMILY and
OUT/head/FAMILY (`--out`, default a new temporary folder), the commands' output to OUT/SIDE/logs. DIR
(`--data-dir`) defaults to `../shared/data` from the repository root.

A commit's outputs are cached in `~/.cache/same_results/<sha>/<settings hash>/` (settings: the commands
above, the data folder, the thread variables, the Python, torch, numpy, labml... versions), so the base is
computed once; the working tree is never cached. When both sides are the same commit, the second side is
recomputed without the cache: the determinism check (`python tests/same_results.py a51807d a51807d`).
`--no-cache` recomputes both sides.

The diff, per family present on both sides (families on one side only are listed, not compared):
* evaluation.json: the same keys everywhere, and every value equal with `==` and the same type (floats
  exactly; NaN equals NaN); strings, booleans and nulls too. Ignored, because two identical runs differ in them:
    - `run`: the run's uuid, new for every run;
    - `seconds`: the evaluation's wall time;
    - `ood_files.*` values: absolute paths of `--ood-file`s (none are passed here; their keys still count).
  Not ignored: `labml_log.global_step` (the checkpoint's samples_seen, which the training fixes), `figures`
  and `predictions` (file names relative to the run folder), `notes`.
* predictions.npz: the same array names, and each array of equal dtype and shape and `np.array_equal`
  (NaN-aware for floating-point arrays).
`--unordered notes` compares the notes as a multiset (the same notes, in any order).
Prints `FAMILY: N numbers, M arrays identical` or the first differences with their JSON paths. Exit code 0:
everything identical; 1: a difference; 2: a run failed or a bad argument.
"""
import argparse, fnmatch, hashlib, json, os, platform, re, shutil, subprocess, sys, tempfile, time
from importlib import metadata
from pathlib import Path

import numpy as np

IGNORED = ('run', 'seconds', 'ood_files.*')  # JSON paths (fnmatch patterns), see the docstring
FILES = ('evaluation.json', 'predictions.npz')
THREADS = {'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1', 'OPENBLAS_NUM_THREADS': '1',
           'NUMEXPR_NUM_THREADS': '1', 'PYTHONHASHSEED': '0', 'CUDA_VISIBLE_DEVICES': ''}
LABML_YAML = 'data_path: data\nexperiments_path: logs\ncheck_repo_dirty: false\n'
PACKAGES = ('torch', 'torchvision', 'numpy', 'labml', 'labml-nn', 'torchmetrics')  # their versions key the cache


def git(repo: Path, *args: str) -> str:
    return subprocess.run(['git', '-C', str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def version(package: str):
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


class RunFailed(Exception):
    """A training or evaluation (or the registry's listing) failed."""


def run_logged(cmd, cwd: Path, env, log: Path) -> str:
    """Runs `cmd`, its stdout then stderr to `log`; returns stdout, raises `RunFailed` with the end of `log`."""
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(p.stdout + p.stderr)
    if p.returncode != 0:
        tail = re.sub(r'\x1b\[[0-9;]*m', '', log.read_text(errors='replace')).replace('\r', '\n')
        tail = '\n'.join(l.rstrip() for l in tail.splitlines() if l.strip())[-2000:]
        raise RunFailed(f"{' '.join(map(str, cmd))} exited {p.returncode} (log: {log}):\n{tail}")
    return p.stdout


class Side:
    """One side of the comparison: a commit (sha) or the working tree (sha None)."""

    def __init__(self, label: str, repo: Path, sha, args, use_cache: bool):
        self.label, self.repo, self.sha, self.use_cache = label, repo, sha, use_cache
        self.name = sha[:10] if sha else 'working tree'
        self.train_args = ['preset=smoke', 'seed=1', 'device=cpu', f'data_dir={args.data_dir}']
        self.eval_args = ['--fgsm-samples', str(args.fgsm_samples), '--missing-samples', str(args.missing_samples),
                          '--device', 'cpu', '--data-dir', str(args.data_dir)]
        self.settings = json.dumps({'train': self.train_args, 'evaluate': self.eval_args, 'env': THREADS,
                                    'python': sys.version, 'machine': platform.machine(),
                                    'versions': {p: version(p) for p in PACKAGES}}, sort_keys=True)
        cache_root = Path(os.environ.get('XDG_CACHE_HOME', Path.home() / '.cache')) / 'same_results'
        self.cache = cache_root / sha / hashlib.sha256(self.settings.encode()).hexdigest()[:12] if sha else None
        self.out, self.families, self.seconds = args.out / label, [], {}

    def cached(self, family: str) -> bool:
        return self.use_cache and self.cache is not None and all((self.cache / family / f).exists() for f in FILES)

    def compute(self) -> None:
        started = time.perf_counter()
        print(f"== {self.label}: {self.name}", flush=True)
        if self.use_cache and self.cache and (self.cache / 'families.json').exists():
            self.families = json.loads((self.cache / 'families.json').read_text())
            if all(self.cached(f) for f in self.families):
                self.finish(started, 'all cached in ' + str(self.cache))
                return
        tmp = Path(tempfile.mkdtemp(prefix=f'same_results-{self.label}-'))
        tree = self.repo
        try:
            if self.sha:
                tree = tmp / 'tree'
                git(self.repo, 'worktree', 'add', '--detach', str(tree), self.sha)
            env = {k: v for k, v in os.environ.items() if k.lower() != 'labml_app_url'}
            env.update(THREADS, PYTHONPATH=str(tree), PYTHONDONTWRITEBYTECODE='1')
            listing = 'import json; from configs import registry; print(json.dumps(list(registry.FAMILIES)))'
            self.families = json.loads(run_logged([sys.executable, '-c', listing], tree, env,
                                                  self.out / 'logs' / 'families.log').splitlines()[-1])
            if self.sha and self.use_cache:  # settings.json: what the hash in the folder's name stands for
                self.cache.mkdir(parents=True, exist_ok=True)
                (self.cache / 'settings.json').write_text(self.settings)
                (self.cache / 'families.json').write_text(json.dumps(self.families))
            project = tmp / 'project'  # runs land under the nearest .labml.yaml from the working directory
            project.mkdir()
            (project / '.labml.yaml').write_text(LABML_YAML)
            trainer = ['experiments.train'] if (tree / 'experiments' / 'train.py').exists() else []
            for i, family in enumerate(self.families, 1):
                head = f"[{self.label} {self.name}] {i}/{len(self.families)} {family}:"
                if self.cached(family):
                    print(f"{head} cached", flush=True)
                    continue
                t0 = time.perf_counter()
                print(f"{head} training...", end='', flush=True)
                module = trainer + [family] if trainer else [f'experiments.{family}']
                out = run_logged([sys.executable, '-m', *module, *self.train_args], project, env,
                                 self.out / 'logs' / f'{family}.train.log')
                found = re.findall(r'^run folder: (.+)$', out, re.M)
                run_dir = Path(found[-1].strip()) if found else next((project / 'logs' / family).iterdir())
                t1 = time.perf_counter()
                print(f" {t1 - t0:.0f} s; evaluating...", end='', flush=True)
                run_logged([sys.executable, '-m', 'experiments.evaluate', str(run_dir), *self.eval_args], project, env,
                           self.out / 'logs' / f'{family}.evaluate.log')
                t2 = time.perf_counter()
                print(f" {t2 - t1:.0f} s", flush=True)
                target = self.cache / family if (self.sha and self.use_cache) else self.out / family
                staging = target.with_name(family + '.partial')
                shutil.rmtree(staging, ignore_errors=True)
                staging.mkdir(parents=True)
                for f in FILES:
                    shutil.copy2(run_dir / f, staging / f)
                (staging / 'seconds.json').write_text(json.dumps({'train': t1 - t0, 'evaluate': t2 - t1}))
                shutil.rmtree(target, ignore_errors=True)
                staging.rename(target)
        finally:
            if tree != self.repo:
                subprocess.run(['git', '-C', str(self.repo), 'worktree', 'remove', '--force', str(tree)],
                               capture_output=True)
            shutil.rmtree(tmp, ignore_errors=True)
        self.finish(started, 'computed')

    def finish(self, started: float, how: str) -> None:
        """Copies the cached families into OUT/<label> and reports the side's time."""
        for family in self.families:
            source = self.cache / family if self.cached(family) else self.out / family
            if source != self.out / family:
                shutil.rmtree(self.out / family, ignore_errors=True)
                shutil.copytree(source, self.out / family)
            self.seconds[family] = json.loads((self.out / family / 'seconds.json').read_text())
        work = sum(s['train'] + s['evaluate'] for s in self.seconds.values())
        print(f"== {self.label} ({self.name}): {how}; {time.perf_counter() - started:.0f} s now; training and "
              f"evaluation took {work:.0f} s when computed", flush=True)


def diff_json(a, b, path: str, stats: dict) -> None:
    """Walks two JSON values side by side: counts compared numbers, appends differences to stats['diffs']."""
    if any(fnmatch.fnmatchcase(path, pattern) for pattern in IGNORED):
        return
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            p = f'{path}.{k}' if path else str(k)
            if k not in a or k not in b:
                stats['diffs'].append(f"{p}: key only in {'head' if k in b else 'base'}")
            else:
                diff_json(a[k], b[k], p, stats)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            stats['diffs'].append(f'{path}: length {len(a)} != {len(b)}')
        for i, (x, y) in enumerate(zip(a, b)):
            diff_json(x, y, f'{path}[{i}]', stats)
    else:
        nan = isinstance(a, float) and isinstance(b, float) and a != a and b != b
        if type(a) is not type(b) or not (a == b or nan):
            stats['diffs'].append(f'{path}: base {a!r} != head {b!r}')
        elif isinstance(a, (int, float)) and not isinstance(a, bool):
            stats['numbers'] += 1
        else:
            stats['other'] += 1


def diff_arrays(a_file: Path, b_file: Path, stats: dict) -> None:
    with np.load(a_file, allow_pickle=False) as a, np.load(b_file, allow_pickle=False) as b:
        for name in sorted(set(a.files) ^ set(b.files)):
            stats['diffs'].append(f"predictions.npz {name}: only in {'head' if name in b.files else 'base'}")
        for name in sorted(set(a.files) & set(b.files)):
            x, y = a[name], b[name]
            if x.dtype != y.dtype or x.shape != y.shape:
                stats['diffs'].append(f'predictions.npz {name}: {x.dtype}{list(x.shape)} != {y.dtype}{list(y.shape)}')
            elif not np.array_equal(x, y, equal_nan=np.issubdtype(x.dtype, np.inexact)):
                same = (x == y) | (np.isnan(x) & np.isnan(y)) if np.issubdtype(x.dtype, np.inexact) else x == y
                bad = np.flatnonzero(~same)
                stats['diffs'].append(f'predictions.npz {name}: {bad.size} of {x.size} elements differ, first at flat '
                                      f'index {bad[0]}: base {x.flat[bad[0]].item()!r} != head {y.flat[bad[0]].item()!r}')
            else:
                stats['arrays'] += 1


def main() -> int:
    repo = Path(git(Path(__file__).resolve().parent, 'rev-parse', '--show-toplevel'))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('base', help='commit or ref')
    parser.add_argument('head', nargs='?', help='commit or ref (default: the working tree, uncommitted state included)')
    parser.add_argument('--data-dir', type=Path, default=repo / '..' / 'shared' / 'data',
                        help='folder with MNIST/raw, FashionMNIST/raw (default: ../shared/data from the repository root)')
    parser.add_argument('--fgsm-samples', type=int, default=200)
    parser.add_argument('--missing-samples', type=int, default=200)
    parser.add_argument('--out', type=Path, help='where each side\'s files are copied (default: a new temporary folder)')
    parser.add_argument('--no-cache', action='store_true', help='recompute committed sides too (and do not cache them)')
    parser.add_argument('--unordered', action='append', default=[], metavar='KEY',
                        help='compare this top-level list (e.g. notes) as a multiset: the same items, any order '
                             '(repeatable)')
    args = parser.parse_args()
    args.data_dir = args.data_dir.resolve()
    if not (args.data_dir / 'MNIST' / 'raw').is_dir():
        parser.error(f'no MNIST/raw in {args.data_dir} (--data-dir)')
    shas = []
    for ref in (args.base, args.head):
        try:
            shas.append(git(repo, 'rev-parse', '--verify', '--quiet', f'{ref}^{{commit}}') if ref else None)
        except subprocess.CalledProcessError:
            parser.error(f'{ref}: not a commit of {repo}')
    args.out = (args.out or Path(tempfile.mkdtemp(prefix='same_results-out-'))).resolve()
    base = Side('base', repo, shas[0], args, not args.no_cache)
    head = Side('head', repo, shas[1], args, not args.no_cache and shas[1] != shas[0])
    if shas[1] == shas[0]:
        print(f'both sides are {shas[0][:10]}: the head side is recomputed without the cache (determinism check)')
    try:
        base.compute()
        head.compute()
    except RunFailed as e:
        print(f'\nerror: {e}', file=sys.stderr)
        return 2
    print(f'\noutputs: {base.out}, {head.out}')
    for side, other in ((base, head), (head, base)):
        only = [f for f in side.families if f not in other.families]
        if only:
            print(f"only in {side.label} ({side.name}), not compared: {', '.join(only)}")
    identical = True
    for family in [f for f in base.families if f in head.families]:
        stats = {'numbers': 0, 'other': 0, 'arrays': 0, 'diffs': []}
        a, b = (json.loads((s.out / family / 'evaluation.json').read_text()) for s in (base, head))
        for key in args.unordered:  # sorted on both sides: only the items count
            for side in (a, b):
                if isinstance(side.get(key), list):
                    side[key] = sorted(side[key], key=json.dumps)
        diff_json(a, b, '', stats)
        diff_arrays(base.out / family / 'predictions.npz', head.out / family / 'predictions.npz', stats)
        if stats['diffs']:
            identical = False
            print(f"{family}: {len(stats['diffs'])} differences ({stats['numbers']} numbers and {stats['arrays']} "
                  f"arrays identical); the first:")
            for d in stats['diffs'][:10]:
                print(f'    {d}')
        else:
            print(f"{family}: {stats['numbers']} numbers, {stats['arrays']} arrays identical "
                  f"(and {stats['other']} strings/flags)")
    print('all identical' if identical else 'DIFFERENT')
    return 0 if identical else 1


if __name__ == '__main__':
    sys.exit(main())
