#!/usr/bin/env python3
"""Turns the JSON lines of `switchboard-bench suite` into BENCHMARKS.md and PNG plots.

Usage: report.py RESULTS.jsonl MACHINE.json NOTES.md OUT.md PLOTDIR
Every ratio in the tables compares servers measured in the same run.
"""
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

TARGETS = ["switchboard", "sockudo", "raw"]
COLORS = {"switchboard": "#1f77b4", "sockudo": "#d62728", "raw": "#7f7f7f"}


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def fmt(n, digits=0):
    if n is None:
        return "n/a"
    return f"{n:,.{digits}f}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "n/a"
    return f"{a / b:.2f}x"


def find(rows, **keys):
    for r in rows:
        if all(r.get(k) == v for k, v in keys.items()):
            return r
    return None


def loss_of(r):
    """`lost/reordered`, with the unanswered publications when there were some: those are
    deliveries the bench counted as owed although the server never acknowledged them."""
    if not r:
        return "n/a"
    text = f"{r['lost']}/{r['out_of_order']}"
    if r.get("unanswered"):
        text += f" ({r['unanswered']} publishes unanswered)"
    return text


def fanout_tables(rows, out):
    fan = [r for r in rows if r["kind"] == "fanout" and r["label"] in ("fanout", "fanout-max")]
    scenarios = []
    for r in fan:
        key = (r["label"], r["channels"], r["per_channel"], r["via"])
        if key not in scenarios:
            scenarios.append(key)
    out.append("| load | publish via | switchboard | sockudo | raw limit | vs sockudo | vs raw | lost / reordered (sb, sockudo, raw) |")
    out.append("|---|---|---:|---:|---:|---:|---:|---|")
    for label, ch, per, via in scenarios:
        got = {t: find(fan, label=label, channels=ch, per_channel=per, via=via, target=t) for t in TARGETS}
        d = {t: (got[t]["deliveries_per_s"] if got[t] else None) for t in TARGETS}
        loss = ", ".join(loss_of(got[t]) for t in TARGETS)
        name = f"{ch:,} ch x {per:,} subs" + (" (max)" if label == "fanout-max" else "")
        out.append(
            f"| {name} | {via} | {fmt(d['switchboard'])} | {fmt(d['sockudo'])} | {fmt(d['raw'])} "
            f"| {ratio(d['switchboard'], d['sockudo'])} | {ratio(d['switchboard'], d['raw'])} | {loss} |"
        )
    out.append("")
    out.append("Deliveries per second of server CPU time (deliveries/s ÷ server cores busy): how much")
    out.append("work each delivery costs the server, whatever the load generator could take.")
    out.append("")
    out.append("| load | publish via | switchboard | sockudo | raw limit | vs sockudo | vs raw | server cores busy (sb, sockudo, raw) |")
    out.append("|---|---|---:|---:|---:|---:|---:|---|")
    for label, ch, per, via in scenarios:
        got = {t: find(fan, label=label, channels=ch, per_channel=per, via=via, target=t) for t in TARGETS}
        eff = {
            t: (got[t]["deliveries_per_s"] / got[t]["server_cpu"] if got[t] and got[t]["server_cpu"] > 0 else None)
            for t in TARGETS
        }
        cores = ", ".join(f"{got[t]['server_cpu']:.2f}" if got[t] else "n/a" for t in TARGETS)
        name = f"{ch:,} ch x {per:,} subs" + (" (max)" if label == "fanout-max" else "")
        out.append(
            f"| {name} | {via} | {fmt(eff['switchboard'])} | {fmt(eff['sockudo'])} | {fmt(eff['raw'])} "
            f"| {ratio(eff['switchboard'], eff['sockudo'])} | {ratio(eff['switchboard'], eff['raw'])} | {cores} |"
        )
    out.append("")


def latency_table(rows, out):
    lat = [r for r in rows if r["kind"] == "fanout" and r["label"].startswith("latency")]
    out.append("| server | rate point | messages/s | deliveries/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | lost/reordered |")
    out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in sorted(lat, key=lambda r: (TARGETS.index(r["target"]), r["rate"] or 0)):
        l = r["latency_us"] or [None] * 5
        point = r["label"].replace("latency-", "")
        point = "50% of sockudo's max" if point == "sockudo-half" else f"{point}% of own max"
        out.append(
            f"| {r['target']} | {point} | {fmt(r['rate'])} | {fmt(r['deliveries_per_s'])} | "
            + " | ".join(fmt(x / 1000, 2) if x is not None else "n/a" for x in l)
            + f" | {loss_of(r)} |"
        )
    out.append("")


def idle_tables(rows, out):
    idle = [r for r in rows if r["kind"] == "idle" and r["label"] == "idle"]
    keys = []
    for r in idle:
        k = (r["door"], r["connections"])
        if k not in keys:
            keys.append(k)
    out.append("| door | connections | client processes | switchboard B/conn | sockudo B/conn | raw B/conn | sb ÷ sockudo |")
    out.append("|---|---:|---:|---:|---:|---:|---:|")
    for door, n in keys:
        got = {t: find(idle, door=door, connections=n, target=t) for t in TARGETS}
        b = {t: (got[t]["per_connection"] if got[t] else None) for t in TARGETS}
        procs = max(got[t]["processes"] for t in TARGETS if got[t])
        out.append(
            f"| {door} | {n:,} | {procs} | {fmt(b['switchboard'])} | {fmt(b['sockudo'])} | {fmt(b['raw'])} "
            f"| {ratio(b['switchboard'], b['sockudo'])} |"
        )
    out.append("")
    out.append("Connection rate (handshakes/s, each counted when its first server frame arrived; 256 in")
    out.append("flight per client process):")
    out.append("")
    out.append("| door | connections | switchboard | sockudo | raw | sb ÷ sockudo |")
    out.append("|---|---:|---:|---:|---:|---:|")
    for door, n in keys:
        got = {t: find(idle, door=door, connections=n, target=t) for t in TARGETS}
        h = {t: (got[t]["handshakes_per_s"] if got[t] else None) for t in TARGETS}
        out.append(
            f"| {door} | {n:,} | {fmt(h['switchboard'])} | {fmt(h['sockudo'])} | {fmt(h['raw'])} "
            f"| {ratio(h['switchboard'], h['sockudo'])} |"
        )
    out.append("")


def targets_check(rows, out):
    fan = [r for r in rows if r["kind"] == "fanout" and r["label"] == "fanout"]
    out.append("| target | measured | met? |")
    out.append("|---|---|---|")
    for ch, per in [(1, 10000), (1000, 10)]:
        sb = find(fan, channels=ch, per_channel=per, via="api", target="switchboard")
        so = find(fan, channels=ch, per_channel=per, via="api", target="sockudo")
        raw = find(fan, channels=ch, per_channel=per, via="api", target="raw")
        if sb and so:
            r = sb["deliveries_per_s"] / so["deliveries_per_s"]
            out.append(f"| fan-out ≥ 3x sockudo ({ch:,} ch x {per:,}) | {r:.2f}x | {'yes' if r >= 3 else 'no'} |")
        if sb and raw:
            r = sb["deliveries_per_s"] / raw["deliveries_per_s"]
            out.append(f"| fan-out ≥ 0.8x raw limit ({ch:,} ch x {per:,}) | {r:.2f}x | {'yes' if r >= 0.8 else 'no'} |")
    lat = [r for r in rows if r["kind"] == "fanout" and r["label"].startswith("latency")]
    sb = find(lat, label="latency-sockudo-half", target="switchboard")
    so = find(lat, label="latency-50", target="sockudo")
    if sb and so and sb["latency_us"] and so["latency_us"]:
        r = sb["latency_us"][2] / so["latency_us"][2]
        out.append(
            f"| p99 at half of sockudo's max ≤ 1/3 of sockudo's | {sb['latency_us'][2] / 1000:.2f} ms vs "
            f"{so['latency_us'][2] / 1000:.2f} ms ({r:.2f}x) | {'yes' if r <= 1 / 3 else 'no'} |"
        )
    idle = [r for r in rows if r["kind"] == "idle" and r["label"] == "idle"]
    for door in ["ws", "sse", "sse-shared"]:
        sbs = [r for r in idle if r["target"] == "switchboard" and r["door"] == door and r["connections"] == 10000]
        so = find(idle, target="sockudo", door="ws", connections=10000)
        if sbs:
            b = sbs[0]["per_connection"]
            line = f"| ≤ 2 KiB per idle {door} connection (10k) | {b:,.0f} B"
            ok = b <= 2048
            if so:
                line += f", {b / so['per_connection']:.2f}x sockudo's WS {so['per_connection']:,.0f} B"
                ok = ok and b <= so["per_connection"] / 4
            out.append(line + f" | {'yes' if ok else 'no'} |")
    mx = [r for r in rows if r["kind"] == "fanout" and r["label"] == "fanout-max" and r["target"] == "switchboard"]
    if mx:
        m = mx[0]
        ok = m["lost"] == 0 and m["out_of_order"] == 0
        out.append(
            f"| ~19,000 connections held, every message delivered | {m['subscribers']:,} subscribers, "
            f"{m['delivered']:,} of {m['expected']:,} delivered | {'yes' if ok else 'no'} |"
        )
    out.append("")


def plots(rows, plotdir):
    os.makedirs(plotdir, exist_ok=True)
    made = []
    # Throughput vs subscribers (one channel, API publisher).
    fan = [r for r in rows if r["kind"] == "fanout" and r["label"] in ("fanout", "fanout-max")
           and r["channels"] == 1 and r["via"] == "api"]
    if fan:
        plt.figure(figsize=(7, 4.5))
        for t in TARGETS:
            pts = sorted((r["subscribers"], r["deliveries_per_s"]) for r in fan if r["target"] == t)
            if pts:
                plt.plot([p[0] for p in pts], [p[1] / 1e6 for p in pts], "o-", label=t, color=COLORS[t])
        plt.xlabel("subscribers of one channel")
        plt.ylabel("deliveries/s (millions)")
        plt.title("Fan-out throughput, 100-byte messages via the server API")
        plt.grid(alpha=0.3)
        plt.legend()
        plt.tight_layout()
        plt.savefig(os.path.join(plotdir, "throughput.png"), dpi=110)
        plt.close()
        made.append(("Throughput vs subscribers", "throughput.png"))
    lat = [r for r in rows if r["kind"] == "fanout" and r["label"].startswith("latency") and r["latency_us"]]
    if lat:
        plt.figure(figsize=(7, 4.5))
        for t in TARGETS:
            pts = sorted((r["rate"], r["latency_us"]) for r in lat if r["target"] == t)
            if pts:
                plt.plot([p[0] for p in pts], [p[1][0] / 1000 for p in pts], "o--", color=COLORS[t], label=f"{t} p50")
                plt.plot([p[0] for p in pts], [p[1][2] / 1000 for p in pts], "s-", color=COLORS[t], label=f"{t} p99")
        plt.xlabel("messages/s published (1,000 channels x 10 subscribers)")
        plt.ylabel("publish → deliver latency (ms)")
        plt.yscale("log")
        plt.title("Latency percentiles vs rate")
        plt.grid(alpha=0.3, which="both")
        plt.legend(fontsize=8)
        plt.tight_layout()
        plt.savefig(os.path.join(plotdir, "latency.png"), dpi=110)
        plt.close()
        made.append(("Latency percentiles vs rate", "latency.png"))
    idle = [r for r in rows if r["kind"] == "idle" and r["label"] == "idle"]
    if idle:
        plt.figure(figsize=(7, 4.5))
        for t in TARGETS:
            for door, style in [("ws", "o-"), ("sse", "s--"), ("sse-shared", "^:")]:
                pts = sorted((r["connections"], r["per_connection"]) for r in idle if r["target"] == t and r["door"] == door)
                if pts:
                    plt.plot([p[0] for p in pts], [p[1] / 1024 for p in pts], style, color=COLORS[t], label=f"{t} {door}")
        plt.xlabel("idle connections")
        plt.ylabel("server RSS per connection (KiB, log scale)")
        plt.yscale("log")
        plt.xscale("log")
        plt.title("Memory per idle connection")
        plt.grid(alpha=0.3, which="both")
        plt.legend(fontsize=8)
        plt.tight_layout()
        plt.savefig(os.path.join(plotdir, "memory.png"), dpi=110)
        plt.close()
        made.append(("Memory vs connections", "memory.png"))
    return made


def main():
    results, machine_path, notes_path, out_path, plotdir = sys.argv[1:6]
    rows = load(results)
    machine = json.load(open(machine_path))
    meta = next((r for r in rows if r["kind"] == "meta"), {})
    out = ["# Benchmarks", ""]
    out.append("Generated by `bench/run.sh` (`bench/report.py` from `bench/results.jsonl`); the notes at the")
    out.append("end are written by hand. Every ratio compares servers measured in the same run, one after")
    out.append("the other, each freshly started, on the same machine and with the same client load.")
    out.append("")
    out.append("## Machine and versions")
    out.append("")
    for k, v in machine.items():
        out.append(f"- {k}: {v}")
    out.append(f"- open-file cap per process: {meta.get('open_files_cap')}")
    out.append(f"- seconds per throughput/latency measurement: {meta.get('seconds')} (after 1 s of warm-up)")
    out.append(f"- command: `{meta.get('command')}`")
    out.append("")
    out.append("## Targets")
    out.append("")
    targets_check(rows, out)
    out.append("## Fan-out throughput (closed loop, 100-byte messages, every delivery checked)")
    out.append("")
    out.append("Publishers keep at most 32 undelivered messages per subscriber in flight (8 keep-alive")
    out.append("connections, 16 pipelined requests each, each connection owning a share of the channels so")
    out.append("per-channel order is checkable). sockudo has no WebSocket publish comparable to ours")
    out.append("(Pusher client events need private channels and skip their sender), so its `ws` rows are n/a.")
    out.append("")
    fanout_tables(rows, out)
    out.append("## Latency at fixed rates (1,000 channels x 10 subscribers, via the server API)")
    out.append("")
    out.append("Publish → deliver, from a timestamp in the payload to its arrival at the subscriber (same")
    out.append("process clock), every delivery of the measured seconds in one hdrhistogram.")
    out.append("")
    latency_table(rows, out)
    out.append("## Memory per idle connection (server RSS delta ÷ connections)")
    out.append("")
    idle_tables(rows, out)
    made = plots(rows, plotdir)
    if made:
        out.append("## Plots")
        out.append("")
        rel = os.path.relpath(plotdir, os.path.dirname(os.path.abspath(out_path)))
        for title, name in made:
            out.append(f"![{title}]({rel}/{name})")
            out.append("")
    if os.path.exists(notes_path):
        out.append(open(notes_path).read().rstrip())
        out.append("")
    with open(out_path, "w") as f:
        f.write("\n".join(out))


if __name__ == "__main__":
    main()
