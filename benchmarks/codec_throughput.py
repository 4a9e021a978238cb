"""Codec throughput: encode and decode-and-accumulate speed of every scheme, on every kernel
backend built here, against a plain memory copy measured in the same run.

Run from the repository root::

    python -m benchmarks.codec_throughput [--elements N] [--repeats R] [--json PATH]

It prints machine facts, a markdown table (paste it into the docs as is) and a list of
performance and size targets marked PASS or MISS. It reports figures only: a missed target
never makes the run fail.

Method. The input is N float32 standard-normal values (fixed seed). Every figure is the best
(minimum) of ``--repeats`` timed calls, after one untimed warm-up call, with
``time.perf_counter`` and the garbage collector paused. Throughput is in GB/s (10^9 bytes per
second) of float32 *input* for encoding and of float32 *output* for decode-and-accumulate, so
every column is over the same 4*N bytes:

- memcpy: ``np.copyto(dst, src)`` of the input buffer. Every "/ memcpy" ratio compares a
  measurement with a memcpy timed *interleaved with it* (call for call, best of each), so
  both see the same machine load: this machine is shared and its speed drifts.
- encode: ``codec.encode(x, seed=...)`` with a fixed seed.
- accumulate: ``codec.decode_into(data, out, weight=0.5, accumulate=True)`` into a
  preallocated float32 buffer of N elements (this includes the validation of the bytes).

The kernel backend is switched in-process with ``codec.backend.use``; the kernels are
single-threaded and nothing is pinned.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from codec import PRESETS, Codec, backend, get_codec

Float32Array = npt.NDArray[np.float32]

SEED = 20_240_601
"""Keys both the input data and the codec's stochastic rounding."""

COMPILED = "cython"
FALLBACK = "numpy"
GIGA = 1e9


@dataclass(frozen=True)
class Scheme:
    name: str
    config: dict[str, Any]


SCHEMES: tuple[Scheme, ...] = (
    Scheme("fp32", dict(PRESETS["fp32"])),
    Scheme("fp16", dict(PRESETS["fp16"])),
    Scheme("int8 stochastic", {**PRESETS["int8"], "rounding": "stochastic"}),
    Scheme("int8 nearest", {**PRESETS["int8"], "rounding": "nearest"}),
    Scheme("int4 stochastic", {**PRESETS["int4"], "rounding": "stochastic"}),
    Scheme("int2 stochastic", {**PRESETS["int2"], "rounding": "stochastic"}),
    Scheme("int2 bucket 128", {**PRESETS["int2"], "rounding": "stochastic", "bucket_size": 128}),
    Scheme("qsgd", dict(PRESETS["qsgd"])),
    Scheme("sign", dict(PRESETS["sign"])),
    Scheme("topk 1% int8", dict(PRESETS["topk"])),
)


@dataclass(frozen=True)
class BackendResult:
    encode_seconds: float
    accumulate_seconds: float
    encoded_bytes: int
    sha256: str
    encode_memcpy_seconds: float
    """memcpy timed interleaved with the encode calls."""
    accumulate_memcpy_seconds: float
    """memcpy timed interleaved with the accumulate calls."""

    @property
    def encode_vs_memcpy(self) -> float:
        return self.encode_memcpy_seconds / self.encode_seconds

    @property
    def accumulate_vs_memcpy(self) -> float:
        return self.accumulate_memcpy_seconds / self.accumulate_seconds


@dataclass
class SchemeResult:
    scheme: Scheme
    full_config: dict[str, Any]
    backends: dict[str, BackendResult] = field(default_factory=dict)

    def size_fraction(self, elements: int) -> float:
        return next(iter(self.backends.values())).encoded_bytes / (4 * elements)

    def identical_bytes(self) -> bool:
        return len({r.sha256 for r in self.backends.values()}) == 1


@dataclass(frozen=True)
class Target:
    label: str
    measured: float | None
    threshold: float
    at_least: bool
    unit: str

    @property
    def status(self) -> str:
        if self.measured is None:
            return "SKIP"
        passed = (
            self.measured >= self.threshold if self.at_least else self.measured <= self.threshold
        )
        return "PASS" if passed else "MISS"


# --- measuring ---------------------------------------------------------------------------


def best_seconds(action: Callable[[], object], repeats: int) -> float:
    """The fastest of ``repeats`` timed calls, after one untimed warm-up call."""
    action()
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        best = math.inf
        for _ in range(repeats):
            start = time.perf_counter()
            action()
            best = min(best, time.perf_counter() - start)
    finally:
        if was_enabled:
            gc.enable()
    return best


def best_interleaved(
    action: Callable[[], object], baseline: Callable[[], object], repeats: int
) -> tuple[float, float]:
    """Best times of ``action`` and ``baseline``, timed alternately call for call so that
    both see the same machine load (after one untimed warm-up call of each)."""
    action()
    baseline()
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        best_action = best_baseline = math.inf
        for _ in range(repeats):
            start = time.perf_counter()
            baseline()
            middle = time.perf_counter()
            action()
            end = time.perf_counter()
            best_baseline = min(best_baseline, middle - start)
            best_action = min(best_action, end - middle)
    finally:
        if was_enabled:
            gc.enable()
    return best_action, best_baseline


def memcpy_seconds(src: Float32Array, dst: Float32Array, repeats: int) -> float:
    return best_seconds(lambda: np.copyto(dst, src), repeats)


def measure_backend(
    codec: Codec, values: Float32Array, out: Float32Array, repeats: int
) -> BackendResult:
    """Encode and decode-and-accumulate timings of ``codec`` on the current backend, each
    interleaved with a memcpy of the same input."""
    copy = np.empty_like(values)

    def memcpy() -> None:
        np.copyto(copy, values)

    data = codec.encode(values, seed=SEED)
    encode, encode_memcpy = best_interleaved(
        lambda: codec.encode(values, seed=SEED), memcpy, repeats
    )
    out.fill(0.0)
    accumulate, accumulate_memcpy = best_interleaved(
        lambda: codec.decode_into(data, out, weight=0.5, accumulate=True), memcpy, repeats
    )
    return BackendResult(
        encode,
        accumulate,
        len(data),
        hashlib.sha256(data).hexdigest(),
        encode_memcpy,
        accumulate_memcpy,
    )


def measure_scheme(
    scheme: Scheme, values: Float32Array, backends: Sequence[str], repeats: int
) -> SchemeResult:
    out = np.empty_like(values)
    results: dict[str, BackendResult] = {}
    config: dict[str, Any] = {}
    for name in backends:
        with backend.use(name):
            codec = get_codec(scheme.config)
            config = codec.get_config()
            results[name] = measure_backend(codec, values, out, repeats)
    return SchemeResult(scheme, config, results)


# --- reporting ---------------------------------------------------------------------------


def rate(elements: int, seconds: float) -> float:
    """GB/s over the 4*N bytes of a float32 buffer of N elements."""
    return 4 * elements / seconds / GIGA


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_facts(elements: int, repeats: int, backends: Sequence[str]) -> dict[str, Any]:
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(affinity) if affinity is not None else None,
        "numpy": np.__version__,
        "codec_default_backend": backend.BACKEND,
        "codec_backends_available": list(backends),
        "elements": elements,
        "input_bytes": 4 * elements,
        "repeats": repeats,
        "seed": SEED,
    }


def fmt_rate(value: float) -> str:
    return f"{value:.2f}"


def fmt_ratio(value: float) -> str:
    return f"{value:.2f}x"


def table(results: Sequence[SchemeResult], elements: int, memcpy: float, compiled: bool) -> str:
    def enc(r: SchemeResult, name: str) -> float:
        return rate(elements, r.backends[name].encode_seconds)

    def acc(r: SchemeResult, name: str) -> float:
        return rate(elements, r.backends[name].accumulate_seconds)

    columns: list[tuple[str, Callable[[SchemeResult], str]]] = [
        ("scheme", lambda r: r.scheme.name),
        ("size/fp32", lambda r: f"{r.size_fraction(elements):.4f}"),
    ]
    if compiled:
        columns += [
            ("encode cython GB/s", lambda r: fmt_rate(enc(r, COMPILED))),
            ("encode numpy GB/s", lambda r: fmt_rate(enc(r, FALLBACK))),
            ("encode speedup", lambda r: fmt_ratio(enc(r, COMPILED) / enc(r, FALLBACK))),
            ("encode / memcpy", lambda r: fmt_ratio(r.backends[COMPILED].encode_vs_memcpy)),
            ("accumulate cython GB/s", lambda r: fmt_rate(acc(r, COMPILED))),
            ("accumulate numpy GB/s", lambda r: fmt_rate(acc(r, FALLBACK))),
            ("accumulate speedup", lambda r: fmt_ratio(acc(r, COMPILED) / acc(r, FALLBACK))),
            (
                "accumulate / memcpy",
                lambda r: fmt_ratio(r.backends[COMPILED].accumulate_vs_memcpy),
            ),
        ]
    else:
        columns += [
            ("encode numpy GB/s", lambda r: fmt_rate(enc(r, FALLBACK))),
            ("accumulate numpy GB/s", lambda r: fmt_rate(acc(r, FALLBACK))),
        ]
    rows = [[title for title, _ in columns], *([cell(r) for _, cell in columns] for r in results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]

    def line(cells: Sequence[str]) -> str:
        padded = (
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(
        "-" * (w + 1) + ":" if i else ":" + "-" * (w + 1) for i, w in enumerate(widths)
    )
    rule = rule + "|"
    return "\n".join([line(rows[0]), rule, *(line(row) for row in rows[1:])])


def targets(
    results: Sequence[SchemeResult], elements: int, memcpy: float, compiled: bool
) -> list[Target]:
    by_name = {r.scheme.name: r for r in results}
    int8 = by_name["int8 stochastic"].backends
    encode_speedup = encode_vs_memcpy = accumulate_vs_memcpy = None
    if compiled:
        encode_speedup = int8[FALLBACK].encode_seconds / int8[COMPILED].encode_seconds
        encode_vs_memcpy = int8[COMPILED].encode_vs_memcpy
        accumulate_vs_memcpy = int8[COMPILED].accumulate_vs_memcpy

    def size(name: str) -> float:
        return by_name[name].size_fraction(elements)

    return [
        Target("int8 stochastic encode, cython vs numpy", encode_speedup, 4.0, True, "x"),
        Target("int8 stochastic encode, cython vs memcpy", encode_vs_memcpy, 0.25, True, "x"),
        Target(
            "int8 decode-and-accumulate, cython vs memcpy", accumulate_vs_memcpy, 0.4, True, "x"
        ),
        Target("int8 size / fp32", size("int8 stochastic"), 0.26, False, ""),
        Target("int4 size / fp32", size("int4 stochastic"), 0.135, False, ""),
        Target("int2 size / fp32 (preset, bucket 512)", size("int2 stochastic"), 0.07, False, ""),
        Target("sign size / fp32", size("sign"), 0.04, False, ""),
    ]


def target_line(target: Target) -> str:
    sign = ">=" if target.at_least else "<="
    wanted = f"{sign} {target.threshold:g}{target.unit}"
    if target.measured is None:
        measured = "not measured (no cython backend)"
    else:
        measured = (
            f"{target.measured:.3f}{target.unit}" if target.unit else f"{target.measured:.4f}"
        )
    return f"- {target.status}  {target.label}: {measured} (target {wanted})"


# --- main --------------------------------------------------------------------------------


def positive_int(text: str) -> int:
    value = int(text.replace("_", ""))
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.codec_throughput",
        description="Codec encode and decode-and-accumulate throughput versus memcpy.",
    )
    parser.add_argument("--elements", type=positive_int, default=1_048_576)
    parser.add_argument("--repeats", type=positive_int, default=15)
    parser.add_argument("--json", type=Path, default=None, metavar="PATH")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    elements: int = args.elements
    repeats: int = args.repeats
    available = backend.available()
    compiled = COMPILED in available
    backends = [COMPILED, FALLBACK] if compiled else [FALLBACK]

    facts = machine_facts(elements, repeats, list(available))
    print("# Codec throughput\n")
    for key, value in facts.items():
        print(f"- {key}: {value}")
    print("- threads: kernels are single-threaded; nothing pinned")
    if not compiled:
        print("\n**The cython backend is not available here: only the numpy fallback runs.**")
    sys.stdout.flush()

    values = np.random.default_rng(SEED).standard_normal(elements, dtype=np.float32)
    copy = np.empty_like(values)

    memcpy_runs = [memcpy_seconds(values, copy, repeats)]
    results = []
    for scheme in SCHEMES:
        memcpy_runs.append(memcpy_seconds(values, copy, repeats))
        results.append(measure_scheme(scheme, values, backends, repeats))
    memcpy_runs.append(memcpy_seconds(values, copy, repeats))
    memcpy_rates = [rate(elements, s) for s in memcpy_runs]
    memcpy = max(memcpy_rates)

    print(
        f"\nmemcpy (np.copyto, {4 * elements} bytes): {min(memcpy_rates):.2f}-{memcpy:.2f} GB/s "
        f"over {len(memcpy_rates)} measurements (start, before each scheme, end): the drift "
        "of this machine. Each '/ memcpy' ratio uses a memcpy interleaved with that very "
        "measurement.\n"
    )
    print(table(results, elements, memcpy, compiled))
    print(
        "\nGB/s = 4*N bytes of float32 input (encode) or output (accumulate) / best time; "
        f"best of {repeats} after a warm-up. accumulate = decode_into(data, out, weight=0.5, "
        "accumulate=True), validation included."
    )
    print("\nConfigs:")
    for r in results:
        same = ""
        if compiled:
            same = (
                "; bytes identical across backends"
                if r.identical_bytes()
                else ("; WARNING: bytes differ between backends")
            )
        print(f"- {r.scheme.name}: {json.dumps(r.full_config, sort_keys=True)}{same}")

    checks = targets(results, elements, memcpy, compiled)
    print("\n## Targets\n")
    for target in checks:
        print(target_line(target))

    if args.json is not None:
        report = {
            "machine": facts,
            "memcpy": {
                "gbps": memcpy,
                "rule": "context only; ratios use interleaved memcpy timings",
                "all_gbps": memcpy_rates,
            },
            "schemes": [
                {
                    "name": r.scheme.name,
                    "config": r.full_config,
                    "size_fraction": r.size_fraction(elements),
                    "identical_bytes_across_backends": r.identical_bytes(),
                    "backends": {
                        name: {
                            "encode_seconds": b.encode_seconds,
                            "encode_gbps": rate(elements, b.encode_seconds),
                            "accumulate_seconds": b.accumulate_seconds,
                            "accumulate_gbps": rate(elements, b.accumulate_seconds),
                            "encoded_bytes": b.encoded_bytes,
                            "encode_vs_memcpy": b.encode_vs_memcpy,
                            "accumulate_vs_memcpy": b.accumulate_vs_memcpy,
                        }
                        for name, b in r.backends.items()
                    },
                }
                for r in results
            ],
            "targets": [
                {
                    "label": t.label,
                    "measured": t.measured,
                    "threshold": t.threshold,
                    "at_least": t.at_least,
                    "status": t.status,
                }
                for t in checks
            ],
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"\nJSON written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
