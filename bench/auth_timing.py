"""How long a wrong password takes for a known app name and for an unknown one (issue 12, item 9).

An unknown name is checked against a dummy hash with the same scheme and parameters as the
configured apps' (`gateway.policy.passwords.DummyHashes`), so the two figures should match
within noise; before, unknown names used a fixed scrypt dummy (138 ms vs 242 ms for argon2).
This is a measurement, not a test: ``make bench-auth`` (``-n`` rounds, default 15).
"""

from __future__ import annotations

import argparse
import statistics
import time

from gateway.policy import passwords


def once(password_hash: str) -> float:
    start = time.perf_counter()
    passwords.verify(password_hash, "a wrong guess")
    return time.perf_counter() - start


def medians_ms(known: str, unknown: str, rounds: int) -> tuple[float, float]:
    """Interleaved, so a busy machine slows both alike."""
    pairs = [(once(known), once(unknown)) for _ in range(rounds)]
    return tuple(statistics.median(side) * 1000 for side in zip(*pairs))  # type: ignore[return-value]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--rounds", type=int, default=15)
    args = parser.parse_args()
    print(f"{'scheme':8} {'known ms':>9} {'unknown ms':>11} {'ratio':>6}")
    for scheme in passwords.SCHEMES:
        stored = passwords.make_hash("the app's password", scheme)
        dummies = passwords.DummyHashes([stored])
        known, unknown = medians_ms(stored, dummies.for_name("no-such-app"), args.rounds)
        print(f"{scheme:8} {known:9.1f} {unknown:11.1f} {unknown / known:6.2f}")


if __name__ == "__main__":
    main()
