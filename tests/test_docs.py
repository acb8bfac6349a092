"""
The documentation (README.md and docs/*.md) cannot drift from the code.

1. **Keys.** Every key of every registered family (`configs.registry.all_families()`, the keys as the command
   line's schema has them, `configs.cli.schema`, which `--help` lists) appears in `docs/configuration.md` in
   backticks, and every option name of an option key (and every value of a string key that takes a fixed set of
   values, read from the key's range check) appears in backticks on a line that names the key. In the other
   direction, every name in the first column of a configuration table (header `key`) is a key of some family.
2. **Commands.** Every `python -m experiments...` command in README.md and docs/*.md (fenced code blocks and
   inline code) parses, without running anything: the module exists; for training (`experiments.train FAMILY`,
   `experiments.<family>`) `configs.cli.resolve` accepts its `key=value` arguments (unknown key, unknown option
   name, wrong type, out of range: a failure); `experiments.sweep` parses and its axes resolve against the
   family (or each grid of a sweep file); every other module's own `parse_args` accepts the arguments (argparse's
   exit is a failure).
3. **Front page.** README.md stays within `README_MAX_LINES`, and neither it nor docs/*.md tells history
   (`HISTORY_WORDS`). The README shows the test command CI runs (`.ci/run`), and every local link of the
   documentation (files and `#anchors`) resolves.

Placeholders in documented commands (the convention the docs follow):

* an UPPERCASE word from `PLACEHOLDERS` (`RUN` a run's uuid or folder, `DIR`, `PATH`, `N`, `S`, `TOKEN`, ...), a
  `<...>` span, or a shell variable (`$s`; a variable assigned earlier in the same code block, `G="..."`, is
  expanded instead) stands for a value: as a `key=VALUE` of training only the key is checked, as an argument of
  an argparse command it is replaced by `0` (which every numeric and string option accepts);
* `...` (or `…`) stands for "more of the same" and is left out;
* square brackets mark optional parts (`[--split validation]`, `[preset=NAME]`): they are removed and what they
  hold is checked like the rest;
* `KEY=VALUE` stands for any override; a module path ending in a placeholder (`experiments.<family>`,
  `experiments.FAMILY`) for the training entry point of any family;
* inline code that is only `python -m MODULE` refers to the module: only its existence is checked (in a code block
  the same line is a command, run without arguments).

Only UPPERCASE words in `PLACEHOLDERS` are placeholders, so option names such as `SGD` are still checked.
"""
import argparse
import contextlib
import importlib
import importlib.util
import io
import re
import shlex
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple, get_origin

import pytest

from configs import registry
from configs.cli import CHECKS, UsageError, resolve, schema

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / 'README.md'
DOCS = sorted((ROOT / 'docs').glob('*.md'))
CONFIGURATION = ROOT / 'docs' / 'configuration.md'

README_MAX_LINES = 300
HISTORY_WORDS = ('issue ', 'this session', 'previous round', 'used to', 'before the fix')
PLACEHOLDERS = frozenset({'RUN', 'RUNS', 'RUN_FOLDER', 'UUID', 'DIR', 'PATH', 'FILE', 'N', 'S', 'C', 'G', 'NAME',
                          'FAMILY', 'KEY', 'VALUE', 'TOKEN', 'HOST', 'PORT', 'URL', 'ADDRESS', 'PLACEHOLDER'})
ELLIPSES = ('...', '…')

# ============================================================================================ 1. keys


def _strings(obj, seen=None) -> Iterator[str]:
    """Every string constant of a check: its code's constants (nested ones too) and its closure's values."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, (tuple, list, set, frozenset)):
        for item in obj:
            yield from _strings(item, seen)
    elif isinstance(obj, dict):
        for item in obj:
            yield from _strings(item, seen)
    elif hasattr(obj, 'co_consts'):
        for const in obj.co_consts:
            yield from _strings(const, seen)
    elif callable(obj) and hasattr(obj, '__code__'):
        yield from _strings(obj.__code__, seen)
        for cell in obj.__closure__ or ():
            with contextlib.suppress(ValueError):  # an empty cell
                yield from _strings(cell.cell_contents, seen)


def _accepts(check, value) -> bool:
    try:
        return check(value) is None
    except Exception:  # noqa: BLE001 - a check that cannot judge a value refuses it
        return False


def fixed_values(key: str, field, checks) -> Optional[List[str]]:
    """The values a key accepts, where it accepts a fixed set: an option key's names, or a string key whose range
    check accepts only some of its own string constants (`one_of(...)`, `v in ('constant', ...)`). `None` for a
    key that takes any value of its type (a path, a URL, a device)."""
    if field.options:
        return list(field.options)
    if (get_origin(field.type) or field.type) is not str or key not in checks:
        return None
    check = checks[key]
    if _accepts(check, 'not-a-value-of-any-key'):
        return None
    accepted = sorted({s for s in _strings(check) if _accepts(check, s)})
    # a pattern (a URL prefix, say) accepts more than its constants: not a fixed set
    if not accepted or any(_accepts(check, s + '-x') for s in accepted):
        return None
    return accepted


def family_keys() -> Dict[str, Dict[str, Optional[List[str]]]]:
    """`{family: {key: fixed values or None}}` of every registered family."""
    out = {}
    for family in registry.all_families():
        checks = {**CHECKS, **family.checks}
        out[family.name] = {key: fixed_values(key, field, checks)
                            for key, field in schema(family.configs, family.defaults).items()}
    return out


def test_every_key_and_option_is_in_the_configuration_page():
    text = CONFIGURATION.read_text()
    lines = text.splitlines()
    missing_keys, missing_values = set(), set()
    for family, keys in family_keys().items():
        for key, values in keys.items():
            if f'`{key}`' not in text:
                missing_keys.add(f'{key} ({family})')
                continue
            for value in values or ():
                if not any(f'`{key}`' in line and f'`{value}`' in line for line in lines):
                    missing_values.add(f'{key}={value} ({family})')
    assert not missing_keys and not missing_values, (
        f"docs/configuration.md lacks keys: {', '.join(sorted(missing_keys)) or 'none'}; "
        f"lacks values (in backticks, on a line naming the key): {', '.join(sorted(missing_values)) or 'none'}")


def _table_first_cells(text: str) -> Iterator[Tuple[int, str]]:
    """(line number, first cell) of each row of the tables whose header's first cell is `key`."""
    in_table = False
    for number, line in enumerate(text.splitlines(), 1):
        if not line.startswith('|'):
            in_table = False
            continue
        first = line.strip('|').split('|')[0].strip()
        if not in_table:
            in_table = first.lower() == 'key'
            continue
        if set(first) <= set('-: '):
            continue
        yield number, first


def test_the_configuration_tables_name_only_real_keys():
    known = {key for keys in family_keys().values() for key in keys} | {'preset'}
    unknown = [f'line {n}: {name}' for n, cell in _table_first_cells(CONFIGURATION.read_text())
               for name in re.findall(r'`([^`]+)`', cell) if name not in known]
    assert not unknown, f"docs/configuration.md's key tables name keys no family has: {'; '.join(unknown)}"


# ============================================================================================ 2. commands

COMMAND = re.compile(r'\bpython3? -m (experiments(?:\.(?:[A-Za-z_]\w*|<[^<>\s]+>))*)')
ASSIGNMENT = re.compile(r'^\s*(?:export\s+)?([A-Za-z_]\w*)=(".*?"|\'.*?\'|\S*)\s*$')


def _logical_lines(markdown: str) -> Iterator[Tuple[str, str, Dict[str, str], bool]]:
    """(where, text, shell variables, inline) of every code line (backslash continuations joined) and inline code
    span."""
    in_block, variables, pending = False, {}, ''
    for number, line in enumerate(markdown.splitlines(), 1):
        if line.lstrip().startswith('```'):
            in_block, variables, pending = not in_block, {}, ''
            continue
        if in_block:
            if line.rstrip().endswith('\\'):
                pending += line.rstrip()[:-1] + ' '
                continue
            text, pending = pending + line, ''
            m = ASSIGNMENT.match(text)
            if m:
                variables[m.group(1)] = m.group(2).strip('"\'')
            yield f'line {number}', text, dict(variables), False
        else:
            for span in re.findall(r'(`+)(.+?)\1', line):
                yield f'line {number}', span[1], {}, True


def _quote_at(text: str, end: int) -> Optional[str]:
    """The quote character open at position `end` of a shell line, or None."""
    quote = None
    for i, ch in enumerate(text[:end]):
        if quote:
            if ch == quote and text[i - 1] != '\\':
                quote = None
        elif ch in '\'"':
            quote = ch
    return quote


def commands_in(path: Path) -> Iterator[Tuple[str, str, Optional[List[str]]]]:
    """(where, module, argv) of every documented `python -m experiments...` command of `path`; argv is None for a
    mere reference to a module (inline code that is `python -m MODULE` and nothing else)."""
    for where, text, variables, inline in _logical_lines(path.read_text()):
        for match in COMMAND.finditer(text):
            rest = text[match.end():]
            quote = _quote_at(text, match.start())
            if quote:  # inside `sh -c '...'`: the command ends with the quote
                rest = rest.split(quote, 1)[0]
            for name, value in variables.items():
                rest = re.sub(rf'\$\{{{name}\}}|\${name}\b', value, rest)
            rest = re.sub(r'<[^<>\s][^<>]*>', 'PLACEHOLDER', rest)
            comment = next((i for i, ch in enumerate(rest) if ch == '#' and (i == 0 or rest[i - 1].isspace())
                            and _quote_at(rest, i) is None), None)
            rest = rest[:comment]
            lexer = shlex.shlex(rest, posix=True, punctuation_chars=True)
            lexer.whitespace_split, lexer.commenters = True, ''
            try:
                tokens = list(lexer)
            except ValueError as e:
                yield f'{path.name} {where}', match.group(1), [f'<unparsable shell: {e}>']
                continue
            argv = []
            for token in tokens:
                if token and set(token) <= set('();<>|&'):
                    break  # the end of this command (`;`, `&&`, `|`, a redirection, a sub-shell's end)
                argv.append(token)
            argv = _unbracket(argv)
            yield f'{path.name} {where}', match.group(1), None if inline and not argv else argv


def _unbracket(argv: List[str]) -> List[str]:
    """Square brackets marking optional parts removed, `...` left out."""
    out = []
    for token in argv:
        if len(token) > 1 and token[0] == '[' and (token[1] == '-' or token[1].isalpha()):
            token = token[1:]
        if token.endswith(']') and token.count(']') > token.count('['):
            token = token[:-1]
        if token and token not in ELLIPSES:
            out.append(token)
    return out


def is_placeholder(value: str) -> bool:
    return value in PLACEHOLDERS or value in ELLIPSES or re.fullmatch(r'\$\{?\w+\}?', value) is not None


def _quietly(fn, *args):
    """`fn(*args)` with its printing captured; returns (result, what it printed)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        return fn(*args), out.getvalue()


def _check_training(family: Optional[registry.Family], argv: List[str]) -> Optional[str]:
    """Why `argv` is not a valid training command line of `family` (any family where it is None), or None."""
    families = [family] if family else registry.all_families()
    concrete, key_only = [], []
    for arg in argv:
        key, _, value = arg.partition('=')
        if '=' in arg and is_placeholder(key):
            continue  # `KEY=VALUE`: any key
        if '=' in arg and is_placeholder(value):
            if key != 'preset':
                key_only.append(key)
        else:
            concrete.append(arg)
    problems = []
    for f in families:
        fields = schema(f.configs, f.defaults)
        unknown = [k for k in key_only if k not in fields]
        try:
            _quietly(resolve, concrete, f)
        except UsageError as e:
            problems.append(f'{f.name}: {e}')
            continue
        if unknown:
            problems.append(f"{f.name}: unknown key {', '.join(unknown)}")
            continue
        return None  # one family accepts it
    return '; '.join(problems)


def _parse_function(module: str):
    """The module's own argument parsing: `parse_args` (or `_parse_args`), of the package's `__main__` too."""
    candidates = [module]
    if importlib.util.find_spec(module).submodule_search_locations is not None:
        candidates.append(f'{module}.__main__')
    for name in candidates:
        m = importlib.import_module(name)
        for attr in ('parse_args', '_parse_args'):
            if callable(getattr(m, attr, None)):
                return getattr(m, attr)
    return None


def _argparse(module: str, argv: List[str]) -> Tuple[Optional[argparse.Namespace], Optional[str]]:
    parse = _parse_function(module)
    if parse is None:
        return None, f'{module} has no parse_args to check the command against'
    argv = ['0' if is_placeholder(a) else a for a in argv]
    try:
        args, _ = _quietly(parse, argv)
    except SystemExit as e:
        if e.code == 0 and ({'-h', '--help'} & set(argv)):
            return None, None
        out = io.StringIO()
        with contextlib.redirect_stderr(out), contextlib.suppress(SystemExit):
            parse(argv)
        return None, f'argparse exit {e.code}: {out.getvalue().strip().splitlines()[-1:]}'
    return args, None


def _check_sweep(argv: List[str]) -> Optional[str]:
    from experiments.sweep import SweepError, load_sweep_file, parse_axes
    args, problem = _argparse('experiments.sweep', argv)
    if problem or args is None:
        return problem
    try:
        extra = parse_axes([a for a in args.axes])
        if args.target.endswith('.py'):
            grids = [(family, axes + extra) for family, axes in load_sweep_file(ROOT / args.target)['grids']]
        else:
            grids = [(args.target, extra)]
    except SweepError as e:
        return f'sweep: {e}'
    for target, axes in grids:
        if target != '0' and target not in registry.FAMILIES:  # '0': a placeholder family
            return f'sweep: unknown family {target!r}'
        family = registry.get(target) if target in registry.FAMILIES else None
        for key, values in axes:
            for value in values:
                problem = _check_training(family, [f'{key}={value}'])
                if problem:
                    return f'sweep axis {key}={value}: {problem}'
    return None


def check_command(module: str, argv: Optional[List[str]]) -> Optional[str]:
    """Why the documented command `python -m module argv` would not parse, or None. A module path whose last part
    is a placeholder (`experiments.<family>`, `experiments.FAMILY`) is a training entry point of any family; `argv`
    None (a mere reference to a module) checks only that the module exists."""
    *package, last = module.split('.')
    if is_placeholder(last) or re.fullmatch(r'<[^<>]+>', last):
        return None if argv is None else _check_training(None, argv)
    if argv is None:
        return None if importlib.util.find_spec(module) is not None else f'no module {module}'
    if any(a.startswith('<unparsable') for a in argv):
        return argv[0]
    if importlib.util.find_spec(module) is None:
        return f'no module {module}'
    spec = importlib.util.find_spec(module)
    if spec.submodule_search_locations is not None and importlib.util.find_spec(f'{module}.__main__') is None:
        return f'{module} is a package without __main__'
    name = module.split('.', 1)[1] if '.' in module else ''
    if name in registry.FAMILIES:
        return _check_training(registry.get(name), argv)
    if name == 'train':
        if argv[:1] in (['--list'], ['--help'], ['-h']):
            return None
        if not argv:
            return 'experiments.train needs a family (or --list)'
        if is_placeholder(argv[0]):
            return _check_training(None, argv[1:])
        if argv[0] not in registry.FAMILIES:
            return f'unknown family {argv[0]!r}'
        return _check_training(registry.get(argv[0]), argv[1:])
    if name == 'sweep':
        return _check_sweep(argv)
    args, problem = _argparse(module, argv)
    if problem is None and name == 'compare' and args is not None and args.columns and args.columns != ['all']:
        from experiments.compare import is_column_name
        bad = [c for c in args.columns if not is_column_name(c)]
        problem = f"--columns: not a column: {', '.join(bad)}" if bad else None
    return problem


def documented_commands() -> List[Tuple[str, str, List[str]]]:
    return [c for path in [README, *DOCS] for c in commands_in(path)]


def test_the_documentation_shows_commands():
    modules = {module for _, module, _ in documented_commands()}
    # the main path of the README, at least
    assert {'experiments.evidence_mnist', 'experiments.evaluate', 'experiments.compare', 'experiments.sweep',
            'experiments.dashboard', 'experiments.benchmark', 'experiments.train'} <= modules, sorted(modules)


def test_every_documented_command_parses():
    failures = []
    for where, module, argv in documented_commands():
        problem = check_command(module, argv)
        if problem:
            failures.append(f"{where}: python -m {module} {shlex.join(argv or [])}\n    -> {problem}")
    assert not failures, f'{len(failures)} documented command(s) do not parse:\n' + '\n'.join(failures)


@pytest.mark.parametrize('module, argv, bad', [
    ('experiments.evidence_mnist', ['kl_coef=0.01'], False),
    ('experiments.evidence_mnist', ['kl_div_points=[(0,0.),(1,1.)]'], True),      # not a key
    ('experiments.evidence_mnist', ['optimizer.optimizer=SGD'], False),             # an option, not a placeholder
    ('experiments.evidence_mnist', ['loss_func=nope'], True),
    ('experiments.evidence_mnist', ['resume=RUN', 'epochs=20'], False),
    ('experiments.evidence_mnist', ['no_such_key=RUN'], True),
    ('experiments.train', ['FAMILY', 'mc_samples=20'], False),
    ('experiments.train', ['nope_mnist'], True),
    ('experiments.evaluate', ['RUN', '--split', 'validation'], False),
    ('experiments.evaluate', ['RUN', '--split', 'nope'], True),
    ('experiments.compare', ['RUN', 'RUN', '--columns', 'accuracy,nope'], True),
    ('experiments.sweep', ['evidence_mnist', 'kl_coef=0.01,0.03', 'seed=1,2'], False),
    ('experiments.sweep', ['evidence_mnist', 'kl_div_points=[(0,0.),(1,1.)]'], True),
    ('experiments.sweep', ['sweeps/compare_all.py', 'data_dir=../shared/data', '--dry-run'], False),
    ('experiments.dashboard', ['--host', '0.0.0.0'], True),                         # beyond loopback needs --token
    ('experiments.benchmark', ['--family', 'packed', '--repeats', '2'], False),
    ('experiments.nope', [], True),
    ('experiments.<family>', ['seed=1', 'KEY=VALUE'], False),                      # any family's entry point
    ('experiments.FAMILY', ['nope=1'], True),
    ('experiments.evaluate', None, False),                                          # a reference to the module
    ('experiments.nope', None, True),
])
def test_the_command_check_itself(module, argv, bad):
    assert (check_command(module, argv) is not None) == bad


def test_commands_are_cut_at_shell_syntax(tmp_path):
    doc = tmp_path / 'x.md'
    doc.write_text("```bash\nG=\"evidence_mnist seed=1,2\"\n"
                   "for s in 5 1; do python -m experiments.evidence_mnist seed=$s; done\n"
                   "unshare -n sh -c 'ip link set lo up; python -m experiments.sweep $G --engine ray'\n"
                   "python -m experiments.evaluate RUN \\\n    [--split validation]   # a comment\n"
                   "python -m experiments.sweep evidence_mnist optimizer.betas=(0.9,0.99)\n```\n"
                   "Inline: `python -m experiments.compare RUN [RUN ...] --over-seeds`.\n")
    found = [(m, a) for _, m, a in commands_in(doc)]
    assert found == [('experiments.evidence_mnist', ['seed=$s']),
                     ('experiments.sweep', ['evidence_mnist', 'seed=1,2', '--engine', 'ray']),
                     ('experiments.evaluate', ['RUN', '--split', 'validation']),
                     ('experiments.sweep', ['evidence_mnist', 'optimizer.betas=']),  # unquoted ( ends it, as in bash
                     ('experiments.compare', ['RUN', 'RUN', '--over-seeds'])]
    assert check_command(*found[3]) is not None


# ============================================================================================ 3. front page


def test_the_readme_is_a_front_page():
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f'README.md has {len(lines)} lines (at most {README_MAX_LINES})'


@pytest.mark.parametrize('path', [README, *DOCS], ids=lambda p: p.name)
def test_no_history(path):
    found = [f'line {n}: {word!r}' for n, line in enumerate(path.read_text().splitlines(), 1)
             for word in HISTORY_WORDS if word in line.lower()]
    assert not found, f"{path.name} tells history: {'; '.join(found)}"


def test_the_readme_shows_the_test_command_ci_runs():
    ci_command = (ROOT / '.ci' / 'run').read_text().strip().splitlines()[-1]
    assert ci_command.startswith('pip install') and ci_command in README.read_text(), ci_command


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r'[`*]|\[([^\]]*)\]\([^)]*\)', lambda m: m.group(1) or '', heading.strip().lower())
    return re.sub(r'[^\w\- ]', '', text).replace(' ', '-')


def _anchors(path: Path) -> set:
    in_block, out = False, set()
    for line in path.read_text().splitlines():
        if line.lstrip().startswith('```'):
            in_block = not in_block
        elif not in_block and line.startswith('#'):
            out.add(_anchor(line.lstrip('#')))
    return out


def test_local_links_resolve():
    broken = []
    for path in [README, *DOCS]:
        text = re.sub(r'```.*?```', '', path.read_text(), flags=re.S)
        for target in re.findall(r'\]\(([^)\s]+)\)', text):
            if re.match(r'[a-z]+:', target):
                continue
            file, _, anchor = target.partition('#')
            linked = (path.parent / file).resolve() if file else path
            if not linked.exists():
                broken.append(f'{path.name}: {target} (no such file)')
            elif anchor and linked.suffix == '.md' and anchor not in _anchors(linked):
                broken.append(f'{path.name}: {target} (no such heading)')
    assert not broken, 'broken links: ' + '; '.join(broken)
