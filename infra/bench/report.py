"""Turns one infra/bench/run.sh run into BENCHMARKS.md's table, target checks and PNG charts.

Usage: report.py RUN_DIR [--secs N] [--write BENCHMARKS.md --charts docs/bench]
Without --write the Markdown is printed only.
"""

import argparse
import csv
import json
import os
import platform
import re
import subprocess
from pathlib import Path

START = "<!-- bench:run:start -->"
END = "<!-- bench:run:end -->"
PATHS = ["direct", "direct-stream", "proxy", "no-cache", "full-miss", "miss", "hit", "rate-limited",
         "stream"]
BASELINE = {"miss": "direct", "no-cache": "direct", "hit": "direct", "rate-limited": "direct",
            "stream": "direct-stream", "miss-50ms": "direct-50ms", "soak": "direct",
            "full-miss": "direct", "proxy": "direct", "proxy-50ms": "direct-50ms"}
MEASURED = ("sluice", "proxy")


def load(run_dir):
    rows = [json.loads(line) for line in open(run_dir / "rows.jsonl")]
    for r in rows:
        secs = r["duration_us"] / 1e6
        r["rps"] = r["requests"] / secs
        r["cpu_us"] = r["gateway_cpu_s"] / max(r["requests"], 1) * 1e6
        e = r["errors"]
        r["socket_errors"] = e["connect"] + e["read"] + e["write"] + e["timeout"]
    soak = []
    path = run_dir / "soak.csv"
    if path.exists():
        soak = [(int(r["seconds"]), int(r["rss_kb"])) for r in csv.DictReader(open(path))]
    return rows, soak


def find(rows, name, conc):
    return next((r for r in rows if r["name"] == name and r["concurrency"] == conc), None)


def ms(us):
    return f"{us / 1000:.3f}" if us < 10_000 else f"{us / 1000:.1f}"


def added(r, base, field):
    if base is None or r["via"] not in MEASURED:
        return ""
    return f"{(r[field] - base[field]) / 1000:+.3f}"


def table(rows):
    out = ["| path | conc | RPS | p50 ms | p99 ms | added p50 ms | added p99 ms | proxy CPU µs/req "
           "| gateway peak RSS MB | non-2xx | socket errors |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        if r["name"] == "soak":
            continue
        base = find(rows, BASELINE.get(r["name"], ""), r["concurrency"])
        cpu = f"{r['cpu_us']:.1f}" if r["via"] in MEASURED else "–"
        rss = f"{r['gateway_peak_rss_kb'] / 1024:.1f}" if r["via"] in MEASURED else "–"
        out.append(f"| {r['name']} | {r['concurrency']} | {r['rps']:,.0f} | {ms(r['p50_us'])} "
                   f"| {ms(r['p99_us'])} | {added(r, base, 'p50_us')} | {added(r, base, 'p99_us')} "
                   f"| {cpu} | {rss} | {r['errors']['non_2xx']:,} | {r['socket_errors']:,} |")
    return "\n".join(out)


def verdict(ok):
    return "met" if ok else "**missed**"


def targets(rows, soak):
    out = ["| target | measured | |", "| --- | --- | --- |"]

    def line(what, measured, ok, note=""):
        if ok is None:
            out.append(f"| {what} | not measured in this run | |")
        else:
            out.append(f"| {what} | {measured} | {verdict(ok)}{note} |")

    miss1, direct1 = find(rows, "miss", 1), find(rows, "direct", 1)
    if miss1 and direct1:
        a50 = (miss1["p50_us"] - direct1["p50_us"]) / 1000
        a99 = (miss1["p99_us"] - direct1["p99_us"]) / 1000
        line("added latency at concurrency 1, cache miss: p50 ≤ 0.1 ms", f"{a50:.3f} ms", a50 <= 0.1,
             "" if a50 <= 0.1 else f" ({a50 / 0.1:.1f}×)")
        line("added latency at concurrency 1, cache miss: p99 ≤ 0.5 ms", f"{a99:.3f} ms", a99 <= 0.5,
             "" if a99 <= 0.5 else f" ({a99 / 0.5:.1f}×)")
    else:
        line("added latency at concurrency 1", "", None)
    miss64, hit64 = find(rows, "miss", 64), find(rows, "hit", 64)
    if miss64:
        ok = miss64["rps"] >= 10_000 and not miss64["socket_errors"] and not miss64["errors"]["non_2xx"]
        line("cache miss at concurrency 64 ≥ 10,000 RPS", f"{miss64['rps']:,.0f} RPS", ok,
             "" if ok else f" ({miss64['rps'] / 10_000:.0%} of it)")
        line("gateway CPU ≤ 100 µs per proxied request (miss, c=64)", f"{miss64['cpu_us']:.1f} µs",
             miss64["cpu_us"] <= 100, "" if miss64["cpu_us"] <= 100 else f" ({miss64['cpu_us'] / 100:.1f}×)")
    else:
        line("cache miss at concurrency 64", "", None)
    plain64 = find(rows, "no-cache", 64)
    if plain64:
        line("gateway CPU ≤ 100 µs per proxied request, cache off (no-cache, c=64)",
             f"{plain64['cpu_us']:.1f} µs ({plain64['rps']:,.0f} RPS)", plain64["cpu_us"] <= 100,
             "" if plain64["cpu_us"] <= 100 else f" ({plain64['cpu_us'] / 100:.1f}×)")
    hits = [r for r in rows if r["name"] == "hit"]
    if hits:
        best = max(hits, key=lambda r: r["rps"])
        line("cache hits ≥ 20,000 RPS (best concurrency)",
             f"{best['rps']:,.0f} RPS at c={best['concurrency']}", best["rps"] >= 20_000,
             "" if best["rps"] >= 20_000 else f" ({best['rps'] / 20_000:.0%} of it)")
    slow, slow_direct = find(rows, "miss-50ms", 256), find(rows, "direct-50ms", 256)
    if slow and slow_direct:
        share = slow["rps"] / slow_direct["rps"]
        errors = slow["socket_errors"] + slow["errors"]["non_2xx"]
        line("256 in flight, 50 ms upstream: no errors, ≥ 95% of direct RPS",
             f"{slow['rps']:,.0f} vs {slow_direct['rps']:,.0f} RPS ({share:.1%}), {errors} errors",
             share >= 0.95 and errors == 0)
    peak = max((r["gateway_peak_rss_kb"] for r in rows if r["via"] == "sluice"), default=None)
    if peak is not None:
        line("gateway RSS ≤ 64 MB under load (peak of all rows)", f"{peak / 1024:.1f} MB", peak <= 64 * 1024)
    if len(soak) >= 3:
        # From the first sample after a minute (allocator pools and caches filled) to the last.
        first = next(((s, kb) for s, kb in soak if s >= 60), soak[1])
        last = soak[-1]
        growth = (last[1] - first[1]) / first[1]
        line(f"RSS flat over the soak (< 5% growth, {first[0]} s → {last[0]} s)",
             f"{first[1] / 1024:.1f} → {last[1] / 1024:.1f} MB ({growth:+.1%})", growth < 0.05)
    else:
        line("RSS flat over a 10-minute soak", "", None)
    return "\n".join(out)


def against_proxy(rows, soak, idle):
    """Issue 18's targets: every one a ratio to the bare proxy's row of the same run."""
    out = ["| target (issue 18) | measured | |", "| --- | --- | --- |"]

    def line(what, measured, ok):
        out.append(f"| {what} | {measured} | {verdict(ok)} |")

    def errors(r):
        return r["socket_errors"] + r["errors"]["non_2xx"]

    for c in sorted({r["concurrency"] for r in rows if r["name"] == "proxy"}):
        p, s = find(rows, "proxy", c), find(rows, "no-cache", c)
        if not s:
            continue
        share, cpu = s["rps"] / p["rps"], s["cpu_us"] / p["cpu_us"]
        line(f"proxying (no-cache) c={c}: RPS ≥ 80% of the bare proxy's",
             f"{s['rps']:,.0f} vs {p['rps']:,.0f} ({share:.0%})", share >= 0.8)
        line(f"proxying (no-cache) c={c}: CPU per request ≤ 1.3× the bare proxy's",
             f"{s['cpu_us']:.1f} vs {p['cpu_us']:.1f} µs ({cpu:.2f}×)", cpu <= 1.3)
    p, s = find(rows, "proxy", 64), find(rows, "full-miss", 64)
    if p and s:
        share = s["rps"] / p["rps"]
        line("full miss path c=64: RPS ≥ 60% of the bare proxy's",
             f"{s['rps']:,.0f} vs {p['rps']:,.0f} ({share:.0%})", share >= 0.6)
    p, s = find(rows, "proxy", 1), find(rows, "full-miss", 1)
    if p and s:
        a50, a99 = (s["p50_us"] - p["p50_us"]) / 1000, (s["p99_us"] - p["p99_us"]) / 1000
        line("full miss path c=1: added p50 ≤ 0.1 ms over the bare proxy", f"{a50:+.3f} ms", a50 <= 0.1)
        line("full miss path c=1: added p99 ≤ 0.5 ms over the bare proxy", f"{a99:+.3f} ms", a99 <= 0.5)
    for c in (1, 64):
        p, s = find(rows, "proxy", c), find(rows, "full-miss", c)
        if p and s:
            rs, rp = s["p99_us"] / s["p50_us"], p["p99_us"] / p["p50_us"]
            line(f"full miss path c={c}: p99/p50 within 2× of the bare proxy's",
                 f"{rs:.1f} vs {rp:.1f} ({rs / rp:.1f}×)", rs <= 2 * rp)
    p, s = find(rows, "proxy", 64), find(rows, "hit", 64)
    if p and s:
        ratio = s["rps"] / p["rps"]
        line("cache hits c=64: RPS ≥ 2× the bare proxy's",
             f"{s['rps']:,.0f} vs {p['rps']:,.0f} ({ratio:.2f}×)", ratio >= 2)
    for delay, conc in (("50ms", 256), ("500ms", 1024)):
        p, s = find(rows, f"proxy-{delay}", conc), find(rows, f"miss-{delay}", conc)
        if p and s:
            share = s["rps"] / p["rps"]
            line(f"{conc} in flight, upstream {delay}: ≥ 95% of the bare proxy's RPS, no errors",
                 f"{s['rps']:,.0f} vs {p['rps']:,.0f} ({share:.1%}), {errors(s)} errors, "
                 f"Sluice peak RSS {s['gateway_peak_rss_kb'] / 1024:.1f} MB "
                 f"(proxy {p['gateway_peak_rss_kb'] / 1024:.1f} MB)",
                 share >= 0.95 and errors(s) == 0)
    sluice = [r for r in rows if r["via"] == "sluice"]
    if sluice:
        top = max(sluice, key=lambda r: r["gateway_peak_rss_kb"])
        idle_note = f"; idle {idle['sluice_kb'] / 1024:.1f} MB (bare proxy {idle['proxy_kb'] / 1024:.1f} MB)" if idle else ""
        line("peak RSS ≤ 64 MB under every row",
             f"{top['gateway_peak_rss_kb'] / 1024:.1f} MB ({top['name']}, c={top['concurrency']}){idle_note}",
             top["gateway_peak_rss_kb"] <= 64 * 1024)
    return "\n".join(out)


def charts(rows, soak, out_dir):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    concs = sorted({r["concurrency"] for r in rows if r["name"] in PATHS})
    names = [p for p in PATHS if any(r["name"] == p for r in rows)]
    made = []
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    for name in names:
        pts = [find(rows, name, c) for c in concs]
        xs = [c for c, r in zip(concs, pts) if r]
        style = dict(linestyle="--" if name.startswith("direct") else "-", marker="o", label=name,
                     color=f"C{PATHS.index(name)}")
        axes[0].plot(xs, [r["rps"] for r in pts if r], **style)
        axes[1].plot(xs, [r["p99_us"] / 1000 for r in pts if r], **style)
        if not name.startswith("direct"):
            axes[2].plot(xs, [r["cpu_us"] for r in pts if r], **style)
    axes[0].set(title="Requests per second", xlabel="concurrency", ylabel="RPS", xscale="log")
    axes[1].set(title="p99 latency", xlabel="concurrency", ylabel="ms", xscale="log", yscale="log")
    axes[2].set(title="Gateway CPU per request", xlabel="concurrency", ylabel="µs", xscale="log")
    axes[2].set_ylim(bottom=0)
    axes[2].axhline(100, color="grey", linestyle=":", label="target 100 µs")
    for ax in axes:
        ax.set_xticks(concs, [str(c) for c in concs])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "throughput-latency-cpu.png", dpi=90)
    plt.close(fig)
    made.append("throughput-latency-cpu.png")
    if soak:
        fig, ax = plt.subplots(figsize=(8, 3.5))
        ax.plot([s / 60 for s, _ in soak], [kb / 1024 for _, kb in soak], marker=".")
        ax.set(title="Gateway RSS during the soak (cache misses, concurrency 64)",
               xlabel="minutes", ylabel="MB", ylim=(0, max(kb for _, kb in soak) / 1024 * 1.3))
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out_dir / "soak-rss.png", dpi=90)
        plt.close(fig)
        made.append("soak-rss.png")
    return made


def machine():
    cpu = ""
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return f"{os.cpu_count()} cores ({cpu}), {platform.machine()}, commit {commit}{' + changes' if dirty else ''}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--secs", type=int, default=10)
    ap.add_argument("--write", type=Path)
    ap.add_argument("--charts", type=Path)
    a = ap.parse_args()
    rows, soak = load(a.run_dir)
    idle_path = a.run_dir / "idle.json"
    idle = json.loads(idle_path.read_text()) if idle_path.exists() else None
    soak_row = next((r for r in rows if r["name"] == "soak"), None)
    parts = [START, "",
             f"Run `{a.run_dir.name}`: `infra/bench/run.sh` on {machine()}. wrk (closed model, "
             f"{a.secs} s per row, 2 threads) and both fake upstreams share the two cores with the "
             "gateway. Added latency is Sluice's row minus the direct row at the same concurrency "
             "(stream rows against direct streams). CPU is the proxy's (Sluice's, or the bare "
             "proxy's on `proxy` rows) user+system time over the row divided by the requests "
             "answered; peak RSS is the row's VmHWM.", "",
             table(rows), "", "Targets against the bare proxy, in this run (issue 18):", "",
             against_proxy(rows, soak, idle), "", "Targets of issue 7 (against fixed figures):", "",
             targets(rows, soak), ""]
    if soak_row:
        parts += [f"Soak: {soak_row['requests']:,} cache misses in {soak_row['duration_us'] / 60e6:.1f} min "
                  f"({soak_row['rps']:,.0f} RPS, p99 {ms(soak_row['p99_us'])} ms, "
                  f"{soak_row['socket_errors'] + soak_row['errors']['non_2xx']} errors, "
                  f"{soak_row['cpu_us']:.1f} µs gateway CPU per request).", ""]
    if a.charts:
        for png in charts(rows, soak, a.charts):
            rel = os.path.relpath(a.charts / png, a.write.parent if a.write else ".")
            parts.append(f"![{png}]({rel})")
        parts.append("")
    parts.append(END)
    block = "\n".join(parts)
    print(block)
    if a.write:
        text = a.write.read_text()
        if START in text and END in text:
            text = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
        else:
            text = text.rstrip("\n") + "\n\n## `infra/bench/run.sh` (issue 7)\n\n" + block + "\n"
        a.write.write_text(text)


if __name__ == "__main__":
    main()
