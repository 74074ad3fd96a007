"""What compiling the request path with mypyc would save: a probe, not a build.

    .venv/bin/python bench/compiled.py [--count 30000]     (mypy: make bench-deps installs it)

Copies the package into a temporary directory, compiles :data:`MODULES` there with mypyc
(C extensions next to the sources, which Python then imports first), and runs
``bench/stages.py`` against the compiled copy and against the source, interleaved.  The
modules are the request path's, less those mypyc cannot take as they are: classes that
interpreted code subclasses (``delivery/publish.py``'s ``BatchPublisher``: the clients and
the tests subclass it) and pydantic models (a verifier's options: mypyc 2.4 emits C that does
not compile).  bench/README.md has what it measured, in process and under wrk.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
MODULES = [
    "webhookbus/http/app.py", "webhookbus/http/urls.py", "webhookbus/http/deadlines.py", "webhookbus/signing.py",
    "webhookbus/events.py", "webhookbus/routing.py", "webhookbus/log.py", "webhookbus/delivery/delivery.py",
    "webhookbus/delivery/claims.py", "webhookbus/delivery/dedup.py", "webhookbus/delivery/records.py",
]
MYPY_CONFIG = "[mypy]\nplugins = pydantic.mypy\nignore_missing_imports = True\n"


def compiled_copy(target: Path) -> None:
    shutil.copytree(ROOT / "webhookbus", target / "webhookbus", ignore=shutil.ignore_patterns("__pycache__"))
    (target / "mypy.ini").write_text(MYPY_CONFIG)
    mypyc = Path(sys.executable).parent / "mypyc"
    result = subprocess.run([str(mypyc), *MODULES], cwd=target, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"mypyc failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")


def stages(count: int, path: Path | None) -> str:
    env = dict(os.environ)
    if path is not None:
        env["PYTHONPATH"] = str(path)
    result = subprocess.run([sys.executable, str(BENCH / "stages.py"), "--count", str(count)], env=env,
                            cwd=path or ROOT, capture_output=True, text=True, check=True)
    return result.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=30_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="webhookbus-mypyc-") as tmp:
        print(f"compiling {len(MODULES)} modules with mypyc ...", flush=True)
        compiled_copy(Path(tmp))
        for round_ in range(args.rounds):
            for name, path in (("source", None), ("compiled", Path(tmp))):
                print(f"-- {name}, round {round_ + 1}\n{stages(args.count, path)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
