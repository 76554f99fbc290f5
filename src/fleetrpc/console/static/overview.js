// The page a fleet operator opens first: calls per second, latency, pending
// and failed calls, devices online, with small charts.  The numbers come from
// GET /api/console/stats, which reads the same counters as /metrics; the
// browser keeps the last few minutes of samples to draw them.
import { useEffect, useRef, useState } from "preact/hooks";
import uPlot from "uplot";
import { request } from "./api.js";
import { html, ErrorNote, useInterval } from "./ui.js";

const KEEP = 150; // samples (5 minutes at one every 2 s)

function Chart({ title, series, data, unit }) {
  const el = useRef(null);
  const plot = useRef(null);
  useEffect(() => {
    const opts = {
      width: Math.max(280, el.current.clientWidth - 8), height: 140, legend: { show: true, live: false },
      scales: { x: { time: true } },
      axes: [{ space: 60 }, { size: 50, values: (u, v) => v.map((x) => x + (unit || "")) }],
      series: [{}, ...series.map((s) => ({ label: s.label, stroke: s.color, width: 2, points: { show: false } }))],
    };
    plot.current = new uPlot(opts, [[], ...series.map(() => [])], el.current);
    return () => plot.current.destroy();
  }, []);
  useEffect(() => { if (plot.current) plot.current.setData(data); }, [data]);
  const waiting = data[0].length < 2;
  return html`<article class="chart"><header>${title}</header>
    ${waiting && html`<small class="muted">collecting samples…</small>`}
    <div ref=${el} style=${waiting ? "visibility:hidden" : ""}></div></article>`;
}

function Tile({ label, value, hint, bad }) {
  return html`<article class=${"tile" + (bad ? " bad" : "")}>
    <small>${label}</small><strong>${value}</strong>${hint && html`<small class="muted">${hint}</small>`}
  </article>`;
}

// A quantile (ms) of the calls between two cumulative bucket snapshots
// [[le_seconds | null, count], ...]; null when no call landed in between.
export function quantile(prev, cur, q) {
  if (!cur || !cur.length) return null;
  const base = new Map((prev || []).map(([le, n]) => [le, n]));
  const deltas = cur.map(([le, n]) => [le, n - (base.get(le) || 0)]);
  const total = deltas[deltas.length - 1][1];
  if (!(total > 0)) return null;
  const want = q * total;
  let lo = 0, below = 0;
  for (const [le, n] of deltas) {
    if (n >= want) {
      if (le === null) return lo * 1000;
      const inside = n - below;
      return (lo + (inside > 0 ? (want - below) / inside : 1) * (le - lo)) * 1000;
    }
    below = n;
    lo = le === null ? lo : le;
  }
  return null;
}

const fmt = (x, digits = 0) => (x == null || Number.isNaN(x) ? "—" : Number(x).toFixed(digits));

export function OverviewPage() {
  const [samples, setSamples] = useState([]);
  const [error, setError] = useState(null);
  const poll = async () => {
    try {
      const s = await request("GET", "api/console/stats");
      setSamples((prev) => [...prev.slice(-KEEP + 1), s]);
      setError(null);
    } catch (e) { setError(e); }
  };
  useEffect(() => { poll(); }, []);
  useInterval(poll, 2000);

  const last = samples[samples.length - 1];
  const rates = [];
  for (let i = 1; i < samples.length; i++) {
    const a = samples[i - 1], b = samples[i];
    const dt = (b.ts - a.ts) / 1000 || 1;
    rates.push({
      t: b.ts / 1000,
      calls: Math.max(0, (b.calls.total - a.calls.total) / dt),
      failed: Math.max(0, (b.calls.failed - a.calls.failed) / dt),
      p50: quantile(a.latency, b.latency, 0.5), p99: quantile(a.latency, b.latency, 0.99),
      pending: b.pending,
    });
  }
  const col = (k) => rates.map((r) => r[k]);
  const now = rates[rates.length - 1];
  const server = last && last.scope === "server";
  return html`<section>
    <header class="page-head"><h2>Overview</h2>
      <small class="muted">${server ? "the whole server" : "your tenant's REST calls and devices"} · updated every 2 s</small></header>
    <${ErrorNote} error=${error} />
    ${last && html`<div class="tiles" id="tiles">
      <${Tile} label="calls / s" value=${fmt(now && now.calls, 1)} hint=${`${last.calls.total} since start`} />
      <${Tile} label="latency p50 / p99" value=${`${fmt(now && now.p50, 1)} / ${fmt(now && now.p99, 1)} ms`}
        hint=${`since start: ${fmt(quantile(null, last.latency, 0.5), 1)} / ${fmt(quantile(null, last.latency, 0.99), 1)} ms`} />
      ${server && html`<${Tile} label="pending calls" value=${last.pending} />`}
      <${Tile} label="failed calls" value=${last.calls.failed} hint="timeouts, offline, errors" bad=${now && now.failed > 0} />
      <${Tile} label="devices online" value=${last.devices.online ?? "—"} hint=${last.devices.total != null ? `of ${last.devices.total}` : ""} />
      ${server && html`<${Tile} label="persistent unfinished" value=${last.persistent.unfinished}
        hint=${`${last.persistent.failed} failed since start`} />`}
    </div>`}
    <div class="charts">
      <${Chart} title="Calls per second" data=${[col("t"), col("calls"), col("failed")]}
        series=${[{ label: "calls/s", color: "#136f63" }, { label: "failed/s", color: "#c0392b" }]} />
      <${Chart} title="Latency" unit=" ms" data=${[col("t"), col("p50"), col("p99")]}
        series=${[{ label: "p50", color: "#136f63" }, { label: "p99", color: "#e67e22" }]} />
      ${server && html`<${Chart} title="Pending calls" data=${[col("t"), col("pending")]}
        series=${[{ label: "pending", color: "#34495e" }]} />`}
    </div>
  </section>`;
}
