// Fleet jobs: one RPC to many devices.  The list, a form to start one, and a
// job's page with its live progress and per-device results.
import { useEffect, useState } from "preact/hooks";
import { request, subscribe, idOf } from "./api.js";
import { html, fmtTime, fmtJson, navigate, Pager, Status, ErrorNote, useLoad, useInterval, Modal } from "./ui.js";

const FINAL = new Set(["COMPLETED", "ABORTED", "CANCELLED", "FAILED"]);

function Progress({ job }) {
  const c = job.result.counts;
  const total = c.total || 1;
  const seg = (n, cls, label) => n > 0 && html`<span class=${"seg " + cls} style=${`width:${(100 * n) / total}%`}
      title=${`${label}: ${n}`}></span>`;
  return html`<div class="progress" role="progressbar" aria-valuemin="0" aria-valuemax=${c.total}
      aria-valuenow=${c.total - c.queued - c.inProgress}>
    ${seg(c.succeeded, "ok", "succeeded")}${seg(c.failed, "bad", "failed")}${seg(c.timedOut, "warn", "timed out")}
    ${seg(c.offline, "off", "offline")}${seg(c.cancelled + c.skipped, "skip", "cancelled or skipped")}
    ${seg(c.inProgress, "run", "in progress")}
  </div>
  <small class="muted counts">${[`${c.succeeded} succeeded`, `${c.failed} failed`, `${c.timedOut} timed out`,
    `${c.offline} offline`, `${c.inProgress} in progress`, `${c.queued} queued`,
    `${c.skipped + c.cancelled} skipped`].join(" · ")} of ${c.total}</small>`;
}

export function JobsPage() {
  const [page, setPage] = useState(0);
  const [creating, setCreating] = useState(false);
  const [data, error, reload] = useLoad(() => request("GET", `api/jobs?pageSize=20&page=${page}`), [page]);
  useInterval(() => { if (data && data.data.some((j) => !FINAL.has(j.status))) reload(); }, 1000);
  return html`<section>
    <header class="page-head"><h2>Jobs</h2><button onClick=${() => setCreating(true)}>+ New job</button></header>
    <${ErrorNote} error=${error} />
    <figure><table class="striped" id="jobs">
      <thead><tr><th>Job</th><th>Status</th><th>Progress</th><th>Created</th></tr></thead>
      <tbody>${data && data.data.map((j) => html`<tr key=${idOf(j)} class="clickable" onClick=${() => navigate(`#/job/${idOf(j)}`)}>
        <td><a href=${`#/job/${idOf(j)}`}>${j.key}</a></td><td><${Status} value=${j.status} /></td>
        <td class="wide"><${Progress} job=${j} /></td><td>${fmtTime(j.createdTime)}</td></tr>`)}
      ${data && !data.data.length && html`<tr><td colspan="4" class="muted">No jobs yet.</td></tr>`}</tbody>
    </table></figure>
    ${data && html`<${Pager} page=${page} totalPages=${data.totalPages} totalElements=${data.totalElements} onPage=${setPage} />`}
    ${creating && html`<${NewJob} onClose=${() => setCreating(false)} onCreated=${(j) => navigate(`#/job/${idOf(j)}`)} />`}
  </section>`;
}

function NewJob({ onClose, onCreated }) {
  const [f, setF] = useState({ selector: "deviceType", target: "default", method: "rpcCommand", params: "{}",
                               rate: "", abortAt: "", oneway: false, persistent: false });
  const [error, setError] = useState(null);
  const set = (k) => (e) => setF({ ...f, [k]: e.target.type === "checkbox" ? e.target.checked : e.target.value });
  const submit = async (e) => {
    e.preventDefault();
    let params;
    try { params = JSON.parse(f.params); } catch (x) { params = f.params; }
    const targets = f.selector === "all" ? { all: true }
      : f.selector === "deviceIds" ? { deviceIds: f.target.split(/[\s,]+/).filter(Boolean) }
      : { [f.selector]: f.target };
    const body = { targets, method: f.method, params, oneway: f.oneway, persistent: f.persistent };
    if (f.rate) body.rollout = { maxPerMinute: Number(f.rate) * 60 };
    if (f.abortAt) body.abort = [{ failureType: "ALL", thresholdPercentage: Number(f.abortAt), minExecuted: 10 }];
    if (f.persistent) body.expirationTime = Date.now() + 3600_000;
    try { onCreated(await request("POST", "api/jobs", body)); } catch (x) { setError(x); }
  };
  return html`<${Modal} title="New job" onClose=${onClose}>
    <form onSubmit=${submit} id="new-job">
      <fieldset class="grid">
        <label>Target <select value=${f.selector} onChange=${set("selector")}>
          <option value="deviceType">device type</option><option value="label">label</option>
          <option value="namePattern">name pattern (*)</option><option value="deviceIds">device ids</option>
          <option value="customerId">customer id</option><option value="all">every device</option>
        </select></label>
        ${f.selector !== "all" && html`<label>Value <input required value=${f.target} onInput=${set("target")} /></label>`}
      </fieldset>
      <fieldset class="grid">
        <label>Method <input required value=${f.method} onInput=${set("method")} /></label>
        <label>Params (JSON) <input value=${f.params} onInput=${set("params")} /></label>
      </fieldset>
      <fieldset class="grid">
        <label>Devices per second <input type="number" min="1" placeholder="no limit" value=${f.rate} onInput=${set("rate")} /></label>
        <label>Abort above failed % <input type="number" min="0" max="100" placeholder="never" value=${f.abortAt} onInput=${set("abortAt")} /></label>
      </fieldset>
      <label><input type="checkbox" checked=${f.oneway} onChange=${set("oneway")} /> one-way</label>
      <label><input type="checkbox" checked=${f.persistent} onChange=${set("persistent")} /> persistent (reaches offline devices within an hour)</label>
      <${ErrorNote} error=${error} />
      <button type="submit">Start job</button>
    </form>
  </${Modal}>`;
}

const OUTCOMES = ["", "IN_PROGRESS", "SUCCEEDED", "FAILED", "TIMED_OUT", "OFFLINE", "CANCELLED"];

export function JobPage({ id }) {
  const [job, error, reload] = useLoad(() => request("GET", `api/job/${id}`), [id]);
  const [page, setPage] = useState(0);
  const [status, setStatus] = useState("");
  const [rows, rowsError, reloadRows] = useLoad(() => request("GET",
    `api/job/${id}/devices?pageSize=20&page=${page}` + (status ? `&status=${status}` : "")), [id, page, status]);
  const running = job && !FINAL.has(job.status);
  useInterval(() => { if (running) { reload(); reloadRows(); } }, 1000);
  // The rows as the job ends: polling stops with its last status, which an
  // event may bring between two polls (a short job: before the first).
  const jobStatus = job && job.status;
  useEffect(() => { if (jobStatus && FINAL.has(jobStatus)) reloadRows(); }, [jobStatus]);
  useEffect(() => subscribe((e) => { if (e.type.startsWith("JOB_") && idOf(e.body) === id) reload(); }), [id]);
  const cancel = async () => { await request("POST", `api/job/${id}/cancel`); reload(); reloadRows(); };
  if (error) return html`<${ErrorNote} error=${error} />`;
  if (!job) return html`<p aria-busy="true">Loading…</p>`;
  const cfg = job.configuration;
  const agg = job.result.aggregate || {};
  return html`<section>
    <header class="page-head">
      <h2>Job ${job.key} <${Status} value=${job.status} /></h2>
      ${running ? html`<button class="secondary" onClick=${cancel}>Cancel job</button>` : html`<a href="#/jobs">‹ All jobs</a>`}
    </header>
    <p><code>${cfg.method}</code> ${fmtJson(cfg.params)} to ${fmtJson(cfg.targets)}
      ${cfg.rollout && cfg.rollout.maxPerMinute ? ` · at most ${cfg.rollout.maxPerMinute / 60}/s` : ""}
      ${cfg.persistent ? " · persistent" : ""}${cfg.oneway ? " · one-way" : ""}</p>
    <${Progress} job=${job} />
    ${job.result.generalError && html`<p class="error">${job.result.generalError}</p>`}
    ${Object.keys(agg).length > 0 && html`<h3>Answers</h3><div class="aggregate">
      ${Object.entries(agg).map(([field, a]) => html`<article>
        <header>${field === "$" ? "reply" : field}</header>
        ${a.overflow ? html`<small class="muted">too many distinct values</small>` : html`<ul>
          ${Object.entries(a.values).sort((x, y) => y[1] - x[1]).map(([v, n]) => html`<li><code>${v}</code>: ${n}</li>`)}</ul>`}
        ${a.numeric && html`<small>min ${a.numeric.min} · max ${a.numeric.max} · mean ${a.numeric.sum === null ? "(past the largest number)" : (a.numeric.sum / a.numeric.count).toFixed(2)}</small>`}
      </article>`)}</div>`}
    <h3>Devices</h3>
    <select aria-label="Filter by outcome" value=${status} onChange=${(e) => { setPage(0); setStatus(e.target.value); }}>
      ${OUTCOMES.map((s) => html`<option value=${s}>${s || "every outcome"}</option>`)}
    </select>
    <${ErrorNote} error=${rowsError} />
    <figure><table class="striped" id="job-devices">
      <thead><tr><th>Device</th><th>Outcome</th><th>Result / error</th><th>Finished</th></tr></thead>
      <tbody>${rows && rows.data.map((r) => html`<tr key=${idOf(r.deviceId)}>
        <td><a href=${`#/device/${idOf(r.deviceId)}`} title=${idOf(r.deviceId)}>${r.deviceName ?? idOf(r.deviceId)}</a></td><td><${Status} value=${r.status} /></td>
        <td class="response">${r.error || fmtJson(r.result)}</td><td>${fmtTime(r.finishTs)}</td></tr>`)}</tbody>
    </table></figure>
    ${rows && html`<${Pager} page=${page} totalPages=${rows.totalPages} totalElements=${rows.totalElements} onPage=${setPage} />`}
  </section>`;
}
