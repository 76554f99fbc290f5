// The live event stream: every RPC status change, presence change and job
// event this user may see, newest first.  The server keeps a bounded buffer
// per connection; when this browser falls behind, it says how many it dropped.
import { useEffect, useState } from "preact/hooks";
import { subscribe, idOf } from "./api.js";
import { html, fmtTime, Status } from "./ui.js";

const KEEP = 300;

function describeEvent(e) {
  if (e.type === "PRESENCE") return html`device <a href=${`#/device/${e.deviceId}`}>${e.name || e.deviceId}</a> is ${e.online ? "online" : "offline"}`;
  if (e.type === "DROPPED") return html`<em>${e.count} events dropped: this browser fell behind</em>`;
  const b = e.body || {};
  if (e.type.startsWith("RPC_")) {
    const method = b.request && b.request.body && b.request.body.method;
    return html`<${Status} value=${b.status} /> <code>${method}</code> to
      <a href=${`#/device/${idOf(b.deviceId)}`}>${idOf(b.deviceId)}</a> <small class="muted">${idOf(b)}</small>`;
  }
  if (e.type.startsWith("JOB_")) {
    const r = b.result || {};
    return html`<a href=${`#/job/${idOf(b)}`}>job ${b.key}</a> <${Status} value=${b.status} />
      ${r.successfulCount ?? 0}/${r.totalCount ?? 0} succeeded`;
  }
  if (e.type === "TO_SERVER_RPC_REQUEST") {
    return html`device <a href=${`#/device/${idOf(b.deviceId)}`}>${idOf(b.deviceId)}</a> called <code>${b.method}</code>`;
  }
  return html`<code>${JSON.stringify(b).slice(0, 200)}</code>`;
}

export function EventsPage() {
  const [events, setEvents] = useState([]);
  const [filter, setFilter] = useState("");
  const [paused, setPaused] = useState(false);
  useEffect(() => subscribe((e) => {
    if (!paused) setEvents((list) => [{ ...e, seen: Date.now() }, ...list].slice(0, KEEP));
  }), [paused]);
  const shown = filter ? events.filter((e) => e.type.startsWith(filter)) : events;
  return html`<section>
    <header class="page-head">
      <h2>Live events</h2>
      <div class="row">
        <select aria-label="Event kind" value=${filter} onChange=${(e) => setFilter(e.target.value)}>
          <option value="">everything</option><option value="RPC_">RPC status</option>
          <option value="PRESENCE">presence</option><option value="JOB_">jobs</option>
          <option value="TO_SERVER">client-side calls</option>
        </select>
        <button class="secondary outline" onClick=${() => setPaused(!paused)}>${paused ? "Resume" : "Pause"}</button>
      </div>
    </header>
    <ul class="events" id="events">
      ${shown.map((e, i) => html`<li key=${e.seen + ":" + i} class=${"ev-" + e.type.toLowerCase()}>
        <time>${fmtTime(e.ts || e.seen)}</time> <span class="ev-type">${e.type}</span> ${describeEvent(e)}
      </li>`)}
      ${!shown.length && html`<li class="muted">Waiting for events…</li>`}
    </ul>
  </section>`;
}
