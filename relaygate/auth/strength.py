"""How strong a secret someone chose is: the bar a key declared in the config must clear.

Keys are stored as unsalted sha256 (``keys.hash_secret``), which is sound only for secrets nobody can guess:
whoever reads the table can try a fast hash billions of times a second. Generated keys are 256 random bits;
a key declared in the config is whatever its author typed, so it must be long and look random.
"""

from __future__ import annotations

import math
from collections import Counter

MIN_LENGTH = 32
# a random 32-character hex string scores 90-125 (200,000 drawn: none below 89.8), base64 ~150;
# "aaaa…" scores 0, "abab…" 32
MIN_BITS = 80.0
# distinct character pairs per pair: random hex scores 0.68-1 (200,000 drawn), "abcd" repeated 0.1,
# "0123456789abcdef" twice 0.52
MIN_DISTINCT_PAIRS = 0.6


def estimated_bits(secret: str) -> float:
    """The secret's length times the entropy of its own character frequencies: a generous upper bound
    for random strings, low for a short alphabet (it cannot see a phrase; ``weakness`` also looks for
    repeats)."""
    n = len(secret)
    if n == 0:
        return 0.0
    return max(0.0, -n * sum(c / n * math.log2(c / n) for c in Counter(secret).values()))


def weakness(secret: str) -> str | None:
    """Why ``secret`` is too weak to declare as a key, or None when it is strong enough."""
    if len(secret) < MIN_LENGTH:
        return (f"a declared key must have at least {MIN_LENGTH} characters (it has {len(secret)}); "
                "use a random one, e.g. `openssl rand -hex 32`")
    bits = estimated_bits(secret)
    if bits < MIN_BITS:
        return (f"a declared key must look random (about {bits:.0f} bits estimated, at least {MIN_BITS:.0f} "
                "needed); use e.g. `openssl rand -hex 32`")
    pairs = len({secret[i:i + 2] for i in range(len(secret) - 1)}) / (len(secret) - 1)
    if pairs < MIN_DISTINCT_PAIRS:
        return "a declared key must look random (it repeats itself); use e.g. `openssl rand -hex 32`"
    return None
