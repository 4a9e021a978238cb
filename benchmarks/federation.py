"""Federation benchmark: strategies and codecs on the same workload, in the same run.

    python -m benchmarks.federation [--agents 8] [--stragglers 2] [--slowdown 5]
                                    [--max-seconds 240] [--output results/federation]

Every configuration is a complete local federation (private Mosquitto, coordinator and
agent processes, bundled digits data with the same Dirichlet split and seed). Part 1 runs
FedAvg waiting for every agent, FedAvg with a deadline, and FedBuff, with 25% of the agents
5x slower (int8 updates). Part 2 runs FedBuff with fp32, int8, int4 and scaled sign (error
feedback on). For each it reports the wall time and uplink bytes to reach 90% and 95% test
accuracy, and the best accuracy, then checks the targets:

- FedBuff reaches 90% in <= 0.5x the wall time of wait-for-all FedAvg;
- int8 reaches the fp32 accuracy within 1 point with <= 0.3x the uplink bytes.

Wall time counts from the first training round (process start-up excluded). Figures only:
a missed target is printed, never raised.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from codec import get_codec
from configs.local import LocalRunSettings
from coordinator.local import LocalFederation

MB = 1e6


@dataclass(frozen=True)
class Configuration:
    label: str
    strategy: dict[str, Any]
    codec: str


STRATEGIES = (
    Configuration("FedAvg, wait for all", {"name": "fedavg"}, "int8"),
    Configuration(
        "FedAvg, 3 s deadline",
        {"name": "fedavg", "deadline_seconds": 3.0, "min_quorum": 4},
        "int8",
    ),
    Configuration("FedBuff K=4", {"name": "fedbuff", "buffer_size": 4}, "int8"),
)
CODECS = tuple(
    Configuration(f"FedBuff K=4, {codec}", {"name": "fedbuff", "buffer_size": 4}, codec)
    for codec in ("fp32", "int8", "int4", "sign")
)


def run_one(config: Configuration, args: argparse.Namespace, output: Path) -> dict[str, Any]:
    settings = LocalRunSettings.model_validate(
        {
            "agents": args.agents,
            "stragglers": args.stragglers,
            "slowdown": args.slowdown,
            "strategy": config.strategy,
            "training": {"codec": get_codec(config.codec).get_config(), "learning_rate": 0.1},
            "stop": {
                "target_accuracy": 0.95,
                "max_seconds": args.max_seconds,
                "max_versions": 100_000,
            },
            "output": output,
            "seed": args.seed,
        }
    )
    print(f"running: {config.label} ...", flush=True)
    results = asyncio.run(LocalFederation(settings).run(live=False))
    results["label"] = config.label
    return results


def _at(results: dict[str, Any], target: str, key: str, scale: float = 1.0) -> str:
    point = results["reached"][target]
    return "-" if point is None else f"{point[key] / scale:.1f}"


def table(runs: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| configuration | to 90%: s | to 90%: MB | to 95%: s | to 95%: MB | best accuracy | "
        "versions | uplink MB | mean staleness |",
        "|:--|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in runs:
        staleness = "-" if r["mean_staleness"] is None else f"{r['mean_staleness']:.2f}"
        lines.append(
            f"| {r['label']} | {_at(r, '0.90', 'seconds')} | {_at(r, '0.90', 'uplink_bytes', MB)} "
            f"| {_at(r, '0.95', 'seconds')} | {_at(r, '0.95', 'uplink_bytes', MB)} "
            f"| {r['best_accuracy']:.3f} | {r['final_version']} | {r['uplink_bytes'] / MB:.2f} "
            f"| {staleness} |"
        )
    return "\n".join(lines)


def targets(runs: dict[str, dict[str, Any]]) -> list[str]:
    lines = []
    wait_all = runs["FedAvg, wait for all"]["reached"]["0.90"]
    fedbuff = runs["FedBuff K=4"]["reached"]["0.90"]
    if wait_all and fedbuff:
        ratio = fedbuff["seconds"] / wait_all["seconds"]
        verdict = "PASS" if ratio <= 0.5 else "MISS"
        lines.append(
            f"- {verdict}  FedBuff time to 90% / wait-for-all FedAvg: {ratio:.2f}x (target <= 0.5x)"
        )
    else:
        lines.append("- MISS  FedBuff vs wait-for-all FedAvg: one of them never reached 90%")
    fp32, int8 = runs["FedBuff K=4, fp32"], runs["FedBuff K=4, int8"]
    gap = (fp32["best_accuracy"] - int8["best_accuracy"]) * 100
    reached = fp32["reached"]["0.90"], int8["reached"]["0.90"]
    verdict = "PASS" if gap <= 1.0 else "MISS"
    lines.append(f"- {verdict}  int8 best accuracy within 1 point of fp32: {gap:+.2f} points")
    if all(reached):
        ratio = reached[1]["uplink_bytes"] / reached[0]["uplink_bytes"]
        verdict = "PASS" if ratio <= 0.3 else "MISS"
        lines.append(
            f"- {verdict}  int8 uplink to 90% / fp32 uplink to 90%: {ratio:.3f}x (target <= 0.3x)"
        )
    return lines


def plot(runs: Sequence[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (by_time, by_bytes) = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for r in runs:
        points = [v for v in r["versions"] if v["accuracy"] is not None]
        by_time.plot(
            [p["seconds"] for p in points],
            [p["accuracy"] for p in points],
            label=r["label"],
            lw=1.2,
        )
        by_bytes.plot(
            [p["uplink_bytes"] / MB for p in points],
            [p["accuracy"] for p in points],
            label=r["label"],
            lw=1.2,
        )
    by_time.set_xlabel("wall time since training started (s)")
    by_bytes.set_xlabel("uplink (MB)")
    by_bytes.set_xscale("log")
    by_time.set_ylabel("test accuracy")
    by_time.set_ylim(0.5, 1.0)
    for axis in (by_time, by_bytes):
        axis.grid(alpha=0.3)
        axis.axhline(0.9, color="grey", lw=0.8, ls="--")
        axis.axhline(0.95, color="grey", lw=0.8, ls=":")
    by_bytes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=8)
    parser.add_argument("--stragglers", type=int, default=2)
    parser.add_argument("--slowdown", type=float, default=5.0)
    parser.add_argument("--max-seconds", type=float, default=240.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=Path("results/federation"))
    parser.add_argument("--only", choices=["strategies", "codecs"], default=None)
    args = parser.parse_args(argv)
    configurations = [
        *(STRATEGIES if args.only != "codecs" else ()),
        *(CODECS if args.only != "strategies" else ()),
    ]
    runs: dict[str, dict[str, Any]] = {}
    for index, config in enumerate(configurations):
        if config.label == "FedBuff K=4, int8" and "FedBuff K=4" in runs:
            runs[config.label] = {**runs["FedBuff K=4"], "label": config.label}
            continue  # the same configuration: measured once
        runs[config.label] = run_one(config, args, args.output / f"{index:02d}")
    args.output.mkdir(parents=True, exist_ok=True)
    ordered = list(runs.values())
    print(
        f"\n# Federation benchmark ({args.agents} agents, {args.stragglers} of them "
        f"{args.slowdown:g}x slower; stop at 95% or {args.max_seconds:g} s)\n"
    )
    print(table(ordered))
    if args.only is None:
        print("\n## Targets\n")
        print("\n".join(targets(runs)))
    (args.output / "federation.json").write_text(json.dumps(ordered, indent=1) + "\n")
    plot(ordered, args.output / "federation.png")
    print(f"\nresults: {args.output / 'federation.json'}, plot: {args.output / 'federation.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
