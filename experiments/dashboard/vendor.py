"""The browser assets the labml-app page loads from CDNs, vendored under ``static/vendor/``.

labml-app 0.5.14's ``index.html`` loads d3 v6, bootstrap 5.0.0-beta2 and
font-awesome 5.9 from jsdelivr / d3js.org / cdnjs. The same files come from
these npm packages (the bootstrap file is byte-identical to the CDN copy: it
matches the ``integrity`` hash in labml-app's page). ``MANIFEST`` records
where each vendored file comes from and its SHA-256.

    python -m experiments.dashboard.vendor           # verify the vendored files
    python -m experiments.dashboard.vendor --fetch   # re-fetch them with `npm pack`

``--fetch`` needs ``npm`` and the npm registry; the dashboard itself never
fetches anything.
"""

import argparse
import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Dict, List, NamedTuple

VENDOR_DIR = Path(__file__).resolve().parent / 'static' / 'vendor'


class Package(NamedTuple):
    npm: str               # name@version, as given to `npm pack`
    folder: str            # folder under static/vendor/
    license: str
    files: Dict[str, str]  # path in the npm tarball (under package/) -> path in folder
    sha256: Dict[str, str]  # path in folder -> sha256


MANIFEST: List[Package] = [
    Package('d3@6.7.0', 'd3-6.7.0', 'BSD-3-Clause',
            {'dist/d3.min.js': 'd3.min.js', 'LICENSE': 'LICENSE'},
            {'d3.min.js': 'fbb8da602a76f4ed49bac3561da62d8149fa121b8fd15685bacc21355d3a3322',
             'LICENSE': '0747bebeb06b10954913149be9b9a8bdf6fad3e6fdcbd9f9524e7a94c13d2cea'}),
    Package('bootstrap@5.0.0-beta2', 'bootstrap-5.0.0-beta2', 'MIT',
            {'dist/css/bootstrap.min.css': 'css/bootstrap.min.css', 'LICENSE': 'LICENSE'},
            {'css/bootstrap.min.css': '9eaec9d24b1ee74ba959d3625d10ecb8677f0247da1f3d215fc1e0094b020126',
             'LICENSE': '5b30317c9c35bb6f05101c501de866cc6852ab9b655dcf5941733f6644c3ebd0'}),
    Package('@fortawesome/fontawesome-free@5.9.0', 'fontawesome-free-5.9.0',
            'CC-BY-4.0 (icons) AND OFL-1.1 (fonts) AND MIT (code)',
            {'css/all.min.css': 'css/all.min.css', 'LICENSE.txt': 'LICENSE.txt',
             **{f'webfonts/fa-{w}.{ext}': f'webfonts/fa-{w}.{ext}'
                for w in ('brands-400', 'regular-400', 'solid-900') for ext in ('woff2', 'woff')}},
            {'css/all.min.css': '533143d96607d94d5d4292838e364aef656d3de58fe74368263776eab9c07542',
             'LICENSE.txt': 'e779748dfe75e84f974df3c7bc07f842011a100159158b0f1f49b2f2a5a515cb',
             'webfonts/fa-brands-400.woff': 'ef7234f1e9d303d2e42a209c547c217b90afa49d60502d04f1b14c906efc02d1',
             'webfonts/fa-brands-400.woff2': '1f49b8706547682e2c5ed6642a2f2dcbd287da458314b967c60d774aa7edb473',
             'webfonts/fa-regular-400.woff': '684157e40f7ee2429707a23d5b77d2c71c5d23f26a9d82839275ff984d13053b',
             'webfonts/fa-regular-400.woff2': '6a16c04229bc2b4da226eb97e68d94f49ba6437b7b5e16c14a101b21a29384e9',
             'webfonts/fa-solid-900.woff': 'c1450cddfd98668e6e593e2d26f11b4c43faaccb5f033b0b50ea6f1ce7bf4b58',
             'webfonts/fa-solid-900.woff2': 'cd398be1a91817126cef10224738e624358edf6f08043abad7e60c1aaeccc8d0'}),
]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check(vendor_dir: Path = VENDOR_DIR) -> List[str]:
    """Problems with the vendored files (missing or changed); empty when all is well."""
    problems = []
    for pkg in MANIFEST:
        for rel, digest in pkg.sha256.items():
            path = vendor_dir / pkg.folder / rel
            if not path.is_file():
                problems.append(f'missing {path}')
            elif _sha256(path) != digest:
                problems.append(f'{path} differs from {pkg.npm} (sha256 mismatch)')
    return problems


def fetch(vendor_dir: Path = VENDOR_DIR) -> None:
    """Re-create ``vendor_dir`` from the npm registry (``npm pack``), checking every hash."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for pkg in MANIFEST:
            out = subprocess.run(['npm', 'pack', '--silent', pkg.npm], cwd=tmp, check=True,
                                 capture_output=True, text=True).stdout.strip().splitlines()[-1]
            with tarfile.open(tmp / out) as tar:
                for src, dst in pkg.files.items():
                    data = tar.extractfile(f'package/{src}').read()
                    if hashlib.sha256(data).hexdigest() != pkg.sha256[dst]:
                        raise RuntimeError(f'{pkg.npm}: {src} does not match the recorded sha256')
                    target = tmp / 'vendor' / pkg.folder / dst
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(data)
        if vendor_dir.exists():
            shutil.rmtree(vendor_dir)
        shutil.copytree(tmp / 'vendor', vendor_dir)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog='python -m experiments.dashboard.vendor', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--fetch', action='store_true', help='re-fetch the files with `npm pack`')
    args = p.parse_args(argv)
    if args.fetch:
        fetch()
    problems = check()
    for line in problems:
        print(line, file=sys.stderr)
    if not problems:
        print('vendored assets OK: ' + ', '.join(pkg.npm for pkg in MANIFEST))
    return 1 if problems else 0


if __name__ == '__main__':
    sys.exit(main())
