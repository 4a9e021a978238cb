"""What crash safety costs the coordinator: appending an update to the journal (fsync
before the PUBACK) against decoding the same update, measured in the same run.

    python -m benchmarks.journal

Sizes: the digits MLP's int8 update, and a 1M-parameter one. The figures depend on the
disk (fsync latency); the ratio says whether journaling or decoding bounds the rate.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from codec import decode_update, encode_update
from codec.envelope import encode_tensors
from coordinator.journal import UPDATE, Journal


def payload(elements: int) -> bytes:
    rng = np.random.default_rng(0)
    tensors = encode_tensors(
        {"w": rng.normal(size=elements).astype(np.float32)}, {"id": "uniform", "bits": 8}
    )
    return encode_update(
        tensors, job_id="bench", sender_id="a", base_version=0, num_samples=1, update_id="x" * 32
    )


def per_second(action, seconds: float = 1.0) -> float:  # type: ignore[no-untyped-def]
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        action()
        count += 1
    return count / (time.perf_counter() - start)


def measure(elements: int, rounds: int = 3) -> dict[str, float]:
    data = payload(elements)
    with tempfile.TemporaryDirectory() as directory:
        durable = Journal(Path(directory) / "fsync")
        buffered = Journal(Path(directory) / "nofsync", fsync=False)
        results: dict[str, list[float]] = {"fsync": [], "no fsync": [], "decode": []}
        for _ in range(rounds):  # interleaved: the machine is shared and noisy
            results["fsync"].append(
                per_second(lambda: durable.append(UPDATE, 0.0, agent="a", payload=data))
            )
            results["no fsync"].append(
                per_second(lambda: buffered.append(UPDATE, 0.0, agent="a", payload=data))
            )
            results["decode"].append(per_second(lambda: decode_update(data)))
        durable.close()
        buffered.close()
    return {name: statistics.median(values) for name, values in results.items()} | {
        "bytes": float(len(data))
    }


def main() -> None:
    print(
        f"{'update':>14} {'bytes':>9} {'journal+fsync/s':>16} {'no fsync/s':>11} "
        f"{'decode/s':>9} {'fsync/decode':>13}"
    )
    for label, elements in (("digits MLP", 4_810), ("1M params", 1_000_000)):
        r = measure(elements)
        print(
            f"{label:>14} {int(r['bytes']):>9} {r['fsync']:>16.0f} {r['no fsync']:>11.0f} "
            f"{r['decode']:>9.0f} {r['fsync'] / r['decode']:>13.2f}"
        )


if __name__ == "__main__":
    main()
