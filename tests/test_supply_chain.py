"""The README's install uses hashed artifacts only: no dependency resolution, wheels only, and relaygate built
from the locked setuptools without build isolation (an isolated build downloads an unpinned, unhashed
setuptools). .ci/quickstart.py runs the same commands verbatim; this says why each flag is there."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def quick_start_pip_commands() -> list[list[str]]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    block = re.findall(r"```sh\n(.*?)```", section, re.S)[0]
    commands = [shlex.split(c) for c in re.split(r"&&|\n", block.replace("\\\n", " ")) if "pip install" in c]
    return [c[c.index("install") + 1:] for c in commands]


def test_the_quick_start_installs_only_hashed_wheels_and_builds_without_isolation() -> None:
    installs = quick_start_pip_commands()
    assert len(installs) == 2
    deps, itself = installs
    assert {"--no-deps", "--require-hashes", "--only-binary"} <= set(deps) and ":all:" in deps
    assert deps[deps.index("-r") + 1] == "requirements.lock"
    # building relaygate: nothing resolved, nothing fetched for the build
    assert "--no-deps" in itself and "--no-build-isolation" in itself


def test_the_build_backend_is_pinned_with_hashes_in_the_runtime_lock() -> None:
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    lock = (ROOT / "requirements.lock").read_text()
    for req in requires:
        name = re.split(r"[<>=!~ ;\[]", req, maxsplit=1)[0].lower()
        pin = re.search(rf"^{re.escape(name)}==\S+ \\\n(\s+--hash=sha256:[0-9a-f]{{64}}.*\n)+", lock, re.M | re.I)
        assert pin is not None, f"{name} (the build backend) is not pinned with hashes in requirements.lock"
