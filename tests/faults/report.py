"""Render the fault suite's figures (the JSON ``tools/faults`` collects) as a
table, and write it into docs/reliability.md between its markers.

    python -m tests.faults.report FIGURES.json [--write docs/reliability.md] [--command "..."]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import re
import sys
from pathlib import Path

BEGIN = "<!-- figures:begin (written by tools/faults) -->"
END = "<!-- figures:end -->"

#: The issue's figures for the long run: probe -> (what is checked, test).
#: probe -> (target, the counts hold, the run was as large as the target)
TARGETS = {
    "inbound fuzz": ("1,000,000 messages, 0 crashes, 0 wrong",
                     lambda f: f["crashes"] == 0 and f["legitimate_wrong"] == 0,
                     lambda f: f["messages"] >= 1_000_000),
    "server kill -9 (same-node)": ("10,000 calls, 0 lost, 0 wrong",
                                   lambda f: f["lost"] == 0 and f["wrong"] == 0, lambda f: f["calls"] >= 10_000),
    "server kill -9 (new-node)": ("10,000 calls, 0 lost, 0 wrong",
                                  lambda f: f["lost"] == 0 and f["wrong"] == 0, lambda f: f["calls"] >= 10_000),
    "broker kill -9": ("5 outages, 0 persistent calls lost",
                       lambda f: f["lost"] == 0, lambda f: f["outages"] >= 5),
    "soak": ("10 minutes, RSS growth < 5 %",
             lambda f: f["rss_growth_percent"] < 5, lambda f: f["seconds"] >= 600),
    "heartbeat/presence flood": ("1,000,000 new ids, memory below the bound",
                                 lambda f: f["rss_growth_mb"] < f["bound_mb"], lambda f: f["new_ids"] >= 1_000_000),
}

#: The figures shown per probe, in order (others stay in the JSON).
SHOWN = {
    "inbound fuzz": ("messages", "crashes", "legitimate_ok", "legitimate_wrong", "legitimate_failed",
                     "rss_start_mb", "rss_end_mb", "warning_lines"),
    "broker kill -9": ("outages", "outage_lengths_s", "calls", "accepted", "lost", "wrong", "ok",
                       "lightweight_during_outage", "crashes"),
    "PostgreSQL kill -9": ("calls", "accepted", "refused_while_down", "lost", "wrong", "ok",
                           "lightweight_while_down", "crashes"),
    "soak": ("seconds", "lightweight_ok", "lightweight_wrong", "persistent_accepted", "rss_warm_mb", "rss_end_mb",
             "rss_growth_percent", "warning_lines", "crashes"),
    "heartbeat/presence flood": ("new_ids", "presence_max_devices", "peak_devices_kept", "rss_growth_mb",
                                 "bound_mb", "registered_device_served", "crashes"),
}
SERVER_KILL = ("calls", "accepted", "refused_during_crash", "lost", "wrong", "ok", "duplicate_deliveries",
               "duplicate_runs", "stale_replies_after_restart", "crashes")


def _fmt(v) -> str:
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    if isinstance(v, dict):
        return ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items())
    if isinstance(v, list):
        return "/".join(_fmt(x) for x in v)
    return str(v)


def table(data: dict) -> str:
    rows = ["| probe | figures | issue's target (long run) |", "|---|---|---|"]
    for probe, figures in data["probes"].items():
        keys = SHOWN.get(probe) or (SERVER_KILL if probe.startswith("server kill") else tuple(figures))
        shown = "; ".join(f"{k.replace('_', ' ')} {_fmt(figures[k])}" for k in keys if k in figures)
        target = ""
        if probe in TARGETS:
            what, counts, size = TARGETS[probe]
            try:
                verdict = ("met" if size(figures) else "counts met, at a reduced size") if counts(figures) \
                    else "NOT met"
            except KeyError:
                verdict = "NOT met (figures missing)"
            target = f"{what}: {verdict}"
        rows.append(f"| {probe} | {shown} | {target} |")
    return "\n".join(rows)


def section(data: dict, command: str) -> str:
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join([
        BEGIN,
        f"Profile **{data['profile']}**, {when}, {platform.node() or 'this machine'} "
        f"({platform.machine()}, Python {platform.python_version()}); command: `{command}`.",
        "",
        table(data),
        END,
    ])


def write(doc: Path, text: str) -> None:
    old = doc.read_text()
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    if not pattern.search(old):
        raise SystemExit(f"{doc}: the figures markers are missing")
    doc.write_text(pattern.sub(lambda m: text, old))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("figures")
    p.add_argument("--write", type=Path)
    p.add_argument("--command", default="tools/faults")
    a = p.parse_args(argv)
    data = json.loads(Path(a.figures).read_text())
    print(table(data))
    if a.write is not None:
        write(a.write, section(data, a.command))
        print(f"written to {a.write}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
