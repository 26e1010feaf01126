"""Summarize a py-spy `raw` (collapsed stacks) profile: where a gateway spends its CPU."""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

_LINE = re.compile(r"^(.*) (\d+)$")
_FRAME = re.compile(r"^(.*?) \((.*?)(?::\d+)?\)$")


def _short(frame: str) -> str:
    """'handle (/venv/lib/python3.11/site-packages/aiohttp/client.py:812)' -> 'handle (aiohttp/client.py)'."""
    m = _FRAME.match(frame)
    if not m:
        return frame
    func, path = m.groups()
    for marker in ("site-packages/", "lib/python3.11/", "/work/wt-bench/", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{func} ({path})"


def summarize(raw: Path, top: int = 15) -> str:
    self_t: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    files: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        stack, n = m.group(1).split(";"), int(m.group(2))
        frames = [_short(f) for f in stack if f.strip()]
        if not frames:
            continue
        total += n
        self_t[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
        for mod in {f.rsplit("(", 1)[-1].rstrip(")") for f in frames}:
            files[mod] += n
    if not total:
        return f"{raw}: no samples\n"
    out = [f"{raw.name}: {total} samples"]
    for title, counter in (("self", self_t), ("inclusive", incl), ("inclusive by file", files)):
        out.append(f"  top {title}:")
        out += [f"    {100 * n / total:5.1f}%  {name}" for name, n in counter.most_common(top)]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    for p in sys.argv[1:]:
        print(summarize(Path(p)))
