#!/usr/bin/env python3
"""Before and after, on the same machine in one sitting: runs the same measurements against two
Switchboard binaries, alternating them round by round so that drift and noisy neighbours hit
both alike, and prints the medians as a Markdown table (with the raw limit, measured in the
same rounds, for scale).

    bench/compare.py BEFORE_BINARY AFTER_BINARY [--rounds 3] [--seconds 4] [--rate 4314]
                     [--only TEXT]...

`--only TEXT` keeps the measurements whose label contains TEXT (repeatable), for more rounds of
the noisy ones: `--only "1 x 10,000" --rounds 7`, `--only paced --rounds 7`, `--only idle`.

Needs target/release/switchboard-bench (cargo build --release -p switchboard-bench).
"""

import argparse
import re
import statistics
import subprocess
import sys

BENCH = "target/release/switchboard-bench"


def run(args):
    done = subprocess.run([BENCH, *args], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def number(text, field):
    match = re.search(rf"{field}: ([0-9.]+)", text)
    return float(match.group(1)) if match else None


def fanout(server, seconds, extra):
    """Deliveries per second, per server CPU-second, and the p99 (ms) when paced."""
    args = ["fanout", "--seconds", str(seconds), *extra]
    if server == "raw":
        args += ["--target", "raw"]
    else:
        args += ["--server", server]
    out = run(args)
    lost = number(out, "lost") or 0
    reordered = number(out, "out_of_order") or 0
    if lost or reordered:
        sys.exit(f"{server} {extra}: lost {lost}, reordered {reordered}")
    per_s = number(out, "deliveries_per_s")
    cpu = number(out, "server_cpu")
    latency = re.search(r"latency_us: Some\(\s*\[\s*([0-9]+),\s*([0-9]+),\s*([0-9]+)", out)
    return {
        "deliveries/s": per_s,
        "deliveries per CPU-second": per_s / cpu if cpu else None,
        "p99 ms": int(latency.group(3)) / 1000 if latency else None,
    }


def idle(server, door, connections):
    out = run(["idle", "--door", door, "--connections", str(connections), "--server", server])
    return {"bytes": float(re.search(r"per connection\s+([0-9]+) bytes", out).group(1))}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("before")
    p.add_argument("after")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=4)
    p.add_argument("--rate", type=float, default=4314, help="messages/s of the paced run")
    p.add_argument("--idle", type=int, default=10000, help="idle connections")
    p.add_argument("--only", action="append", default=[],
                   help="keep the measurements whose label contains this (repeatable)")
    a = p.parse_args()
    wanted = lambda label: not a.only or any(text in label for text in a.only)

    loads = [
        ("fan-out 1 x 10,000 (WebSocket)", ["--channels", "1", "--per-channel", "10000"], True),
        ("fan-out 1,000 x 10 (WebSocket)", ["--channels", "1000", "--per-channel", "10"], True),
        ("fan-out 1 x 5,000 (SSE)", ["--subscribers", "sse", "--channels", "1",
                                     "--per-channel", "5000"], False),
        ("fan-out 1,000 x 10 (SSE)", ["--subscribers", "sse", "--channels", "1000",
                                      "--per-channel", "10"], False),
        (f"paced {a.rate:,.0f} msg/s, 1,000 x 10 (WebSocket)",
         ["--channels", "1000", "--per-channel", "10", "--rate", str(a.rate)], True),
    ]
    results = {}  # (label, metric, who) -> [values]

    def note(label, who, measured):
        for metric, value in measured.items():
            if value is not None:
                results.setdefault((label, metric, who), []).append(value)

    for round_ in range(a.rounds):
        order = ["before", "after"] if round_ % 2 == 0 else ["after", "before"]
        for label, extra, with_raw in loads:
            if not wanted(label):
                continue
            for who in order:
                note(label, who, fanout(getattr(a, who), a.seconds, extra))
            if with_raw:
                note(label, "raw", fanout("raw", a.seconds, extra))
            print(f"round {round_ + 1}: {label} done", file=sys.stderr)
        for door in ["ws", "sse", "sse-shared"]:
            label = f"idle {door}, {a.idle:,} connections"
            if not wanted(label):
                continue
            for who in order:
                note(label, who, idle(getattr(a, who), door, a.idle))
        print(f"round {round_ + 1} done", file=sys.stderr)

    print("| measurement | metric | before | after | after/before | raw limit |")
    print("|---|---|---:|---:|---:|---:|")
    seen = []
    for (label, metric, _) in results:
        if (label, metric) not in seen:
            seen.append((label, metric))
    for label, metric in seen:
        med = {who: statistics.median(results[(label, metric, who)])
               for who in ["before", "after", "raw"] if (label, metric, who) in results}
        ratio = med["after"] / med["before"] if med.get("before") else float("nan")
        fmt = (lambda v: f"{v:,.2f}") if metric == "p99 ms" else (lambda v: f"{v:,.0f}")
        raw = fmt(med["raw"]) if "raw" in med else ""
        print(f"| {label} | {metric} | {fmt(med['before'])} | {fmt(med['after'])} "
              f"| {ratio:.2f}x | {raw} |")
    print(f"\nmedians of {a.rounds} rounds, {a.seconds:g} s each, alternating the binaries")


if __name__ == "__main__":
    main()
