// One device: its facts, ThingsBoard's RPC control widgets and its
// persistent calls.  Every widget sends exactly what ThingsBoard's widget of
// the same name sends, through the same REST API (see api.js sendRpc).
import { useEffect, useRef, useState } from "preact/hooks";
import { request, session, subscribe, sendRpc, sendPersistent, idOf, NULL_UUID, describe } from "./api.js";
import { html, fmtTime, fmtAgo, fmtJson, navigate, Online, Pager, Status, ErrorNote, useLoad, uuid } from "./ui.js";
import { ConnectHelp } from "./devices.js";

function errorText(err) {
  if (!err) return "";
  if (err.status === 504) return "request timeout"; // as the widgets say it
  return err.message || describe(err.status);
}

export function DevicePage({ id }) {
  const [device, error, reload] = useLoad(() => request("GET", `api/device/${id}`), [id]);
  const [online, setOnline] = useState(null);
  // (again when presence changes: where the device is connected, too)
  const [info] = useLoad(() => request("GET", `api/device/info/${id}`).catch(() => null), [id, online]);
  const [last, setLast] = useState(null);
  useEffect(() => subscribe((e) => {
    if (e.type === "PRESENCE" && e.deviceId === id) { setOnline(e.online); setLast(e.ts); }
  }), [id]);
  if (error) return html`<section><h2>Device</h2><${ErrorNote} error=${error} /></section>`;
  if (!device) return html`<p aria-busy="true">Loading…</p>`;
  const active = online ?? (info && info.active);
  const lastActivity = Math.max(last || 0, (info && info.lastActivityTime) || 0) || null;
  return html`<section>
    <header class="page-head">
      <h2>${device.name} <${Online} online=${active} /></h2>
      <a href="#/devices">‹ All devices</a>
    </header>
    <${Facts} device=${device} info=${info} lastActivity=${lastActivity} onChange=${reload} />
    <h3>Control</h3>
    <div class="widgets">
      <${RpcButton} id=${id} />
      <${RoundSwitch} id=${id} />
      <${Knob} id=${id} />
      <${PersistentCall} id=${id} />
    </div>
    <${Terminal} id=${id} />
    <${PersistentTable} id=${id} />
  </section>`;
}

function Facts({ device, info, lastActivity, onChange }) {
  const id = idOf(device);
  const [token, setToken] = useState(null);
  const [customers, setCustomers] = useState(null);
  const [err, setErr] = useState(null);
  const isAdmin = session.authority === "TENANT_ADMIN";
  const showToken = async () => {
    try { setToken((await request("GET", `api/device/${id}/credentials`)).credentialsId); } catch (e) { setErr(e); }
  };
  const loadCustomers = async () => {
    try { setCustomers((await request("GET", "api/customers?pageSize=100&page=0")).data); } catch (e) { setErr(e); }
  };
  const assign = async (customerId) => {
    try {
      if (customerId) await request("POST", `api/customer/${customerId}/device/${id}`);
      else await request("DELETE", `api/customer/device/${id}`);
      setCustomers(null);
      onChange();
    } catch (e) { setErr(e); }
  };
  const remove = async () => {
    if (!confirm(`Delete device ${device.name}?`)) return;
    try { await request("DELETE", `api/device/${id}`); navigate("#/devices"); } catch (e) { setErr(e); }
  };
  const customerId = idOf(device.customerId);
  return html`<dl class="facts">
    <dt>Id</dt><dd><code>${id}</code></dd>
    <dt>Type</dt><dd>${device.type}</dd>
    <dt>Label</dt><dd>${device.label || "—"}</dd>
    <dt>Customer</dt><dd>${(info && info.customerTitle) || (customerId === NULL_UUID ? "—" : customerId)}
      ${isAdmin && !customers && html` <a href="#" onClick=${(e) => { e.preventDefault(); loadCustomers(); }}>change</a>`}
      ${customers && html`<select onChange=${(e) => assign(e.target.value)} aria-label="Assign to customer">
        <option value="">(none)</option>
        ${customers.map((c) => html`<option value=${idOf(c)} selected=${idOf(c) === customerId}>${c.title}</option>`)}
      </select>`}</dd>
    <dt>Last activity</dt><dd title=${lastActivity ? new Date(lastActivity).toLocaleString() : ""}>${fmtAgo(lastActivity)}</dd>
    <dt>Connected</dt><dd id="connected-via">${connectedVia(info)}</dd>
    <dt>Access token</dt><dd>${token
      ? html`<code id="device-token">${token}</code><${ConnectHelp} deviceId=${id} token=${token} />`
      : html`<a href="#" onClick=${(e) => { e.preventDefault(); showToken(); }}>show</a>`}</dd>
    ${isAdmin && html`<dt></dt><dd><button class="secondary outline small" onClick=${remove}>Delete device</button></dd>`}
  </dl><${ErrorNote} error=${err} />`;
}

// DeviceInfo's connectedVia (fleetrpc's): "broker", a node id, or null.
export function connectedVia(info) {
  const via = info && info.connectedVia;
  if (!via) return "—";
  return via === "broker" ? "through the broker" : html`directly, to the device endpoint of node <code>${via}</code>`;
}

// RPC button (control_widgets.rpcbutton): method rpcCommand, params {},
// one-way by default, requestTimeout 5000.
function RpcButton({ id }) {
  const [twoWay, setTwoWay] = useState(false);
  const [persistent, setPersistent] = useState(false);
  const [out, setOut] = useState(null);
  const [busy, setBusy] = useState(false);
  const press = async () => {
    setBusy(true);
    setOut(null);
    const call = { oneway: !twoWay, method: "rpcCommand", params: {}, timeout: 5000 };
    try {
      if (persistent) {
        const rpc = await sendPersistent(id, call, { onStatus: (r) => setOut({ text: r.status }) });
        setOut(rpc.status === "FAILED"
          ? { error: (rpc.response && rpc.response.error) || "FAILED" }
          : { text: `${rpc.status}${rpc.response ? ": " + fmtJson(rpc.response) : ""}` });
      } else {
        const reply = await sendRpc(id, call);
        setOut({ text: twoWay ? fmtJson(reply) : "sent" });
      }
    } catch (err) {
      setOut({ error: errorText(err) });
    } finally {
      setBusy(false);
    }
  };
  return html`<article class="widget" id="rpc-button">
    <header>RPC button</header>
    <button onClick=${press} aria-busy=${busy} disabled=${busy}>Send RPC</button>
    <label><input type="checkbox" role="switch" checked=${twoWay} onChange=${(e) => setTwoWay(e.target.checked)} /> two-way</label>
    <label><input type="checkbox" role="switch" checked=${persistent} onChange=${(e) => setPersistent(e.target.checked)} /> persistent</label>
    <output class=${out && out.error ? "error" : ""}>${out ? out.error || out.text : ""}</output>
  </article>`;
}

// Round switch: on load a two-way getValue with params null, the reply read
// as `data ? true : false`; on change a one-way setValue with the bare boolean.
function RoundSwitch({ id }) {
  const [value, setValue] = useState(null);
  const [err, setErr] = useState(null);
  const load = async () => {
    try { setValue(!!(await sendRpc(id, { oneway: false, method: "getValue", params: null, timeout: 500 }))); setErr(null); }
    catch (e) { setErr(errorText(e)); }
  };
  useEffect(() => { load(); }, [id]);
  const toggle = async () => {
    const next = !value;
    setValue(next);
    try { await sendRpc(id, { oneway: true, method: "setValue", params: next, timeout: 500 }); setErr(null); }
    catch (e) { setValue(!next); setErr(errorText(e)); }
  };
  return html`<article class="widget" id="round-switch">
    <header>Round switch</header>
    <button class=${"round-switch " + (value ? "on" : "off")} aria-pressed=${!!value} onClick=${toggle}
            disabled=${value === null && !err} title="setValue">
      <span>${value === null ? "…" : value ? "ON" : "OFF"}</span>
    </button>
    <small><a href="#" onClick=${(e) => { e.preventDefault(); load(); }}>read back</a></small>
    ${err && html`<output class="error">${err}</output>`}
  </article>`;
}

// Knob control: getValue (two-way, params null) on load, default 50; each
// settled change sends a one-way setValue with the number.
function Knob({ id }) {
  const [value, setValue] = useState(50);
  const [sent, setSent] = useState(null);
  const [err, setErr] = useState(null);
  const timer = useRef(null);
  const load = async () => {
    try {
      const v = await sendRpc(id, { oneway: false, method: "getValue", params: null, timeout: 5000 });
      if (typeof v === "number") setValue(v);
      setErr(null);
    } catch (e) { setErr(errorText(e)); }
  };
  useEffect(() => { load(); }, [id]);
  const change = (v) => {
    setValue(v);
    clearTimeout(timer.current);
    timer.current = setTimeout(async () => {
      try { await sendRpc(id, { oneway: true, method: "setValue", params: v, timeout: 5000 }); setSent(v); setErr(null); }
      catch (e) { setErr(errorText(e)); }
    }, 200);
  };
  const angle = -135 + (value / 100) * 270;
  return html`<article class="widget" id="knob">
    <header>Knob</header>
    <svg viewBox="0 0 100 100" class="knob" aria-hidden="true">
      <circle cx="50" cy="50" r="40" class="knob-face" />
      <line x1="50" y1="50" x2="50" y2="16" class="knob-needle" transform=${`rotate(${angle} 50 50)`} />
      <text x="50" y="92" text-anchor="middle" class="knob-value">${value}</text>
    </svg>
    <input type="range" min="0" max="100" value=${value} aria-label="Knob value"
           onInput=${(e) => change(Number(e.target.value))} />
    <small>${sent !== null ? `set to ${sent}` : ""} <a href="#" onClick=${(e) => { e.preventDefault(); load(); }}>read back</a></small>
    ${err && html`<output class="error">${err}</output>`}
  </article>`;
}

// A persistent call of any method, followed by polling its record.
function PersistentCall({ id }) {
  const [method, setMethod] = useState("rpcCommand");
  const [params, setParams] = useState("{}");
  const [oneway, setOneway] = useState(false);
  const [retries, setRetries] = useState(1);
  const [trail, setTrail] = useState([]);
  const [err, setErr] = useState(null);
  const send = async (e) => {
    e.preventDefault();
    setTrail([]);
    setErr(null);
    let p;
    try { p = JSON.parse(params); } catch (x) { p = params; }
    try {
      await sendPersistent(id, { oneway, method, params: p, retries: Number(retries), timeout: 5000 },
        { onStatus: (r) => setTrail((t) => (t[t.length - 1] === r.status ? t : [...t, r.status])) });
    } catch (x) { setErr(errorText(x)); }
  };
  return html`<article class="widget" id="persistent-call">
    <header>Persistent call</header>
    <form onSubmit=${send}>
      <input value=${method} onInput=${(e) => setMethod(e.target.value)} aria-label="Method" placeholder="method" />
      <input value=${params} onInput=${(e) => setParams(e.target.value)} aria-label="Params" placeholder="params (JSON)" />
      <div class="row">
        <label><input type="checkbox" checked=${oneway} onChange=${(e) => setOneway(e.target.checked)} /> one-way</label>
        <label>retries <input type="number" min="0" max="5" value=${retries} onInput=${(e) => setRetries(e.target.value)} class="narrow" /></label>
      </div>
      <button type="submit">Send persistent</button>
    </form>
    <output>${trail.map((s, i) => html`${i ? " → " : ""}<${Status} value=${s} />`)}</output>
    ${err && html`<output class="error">${err}</output>`}
  </article>`;
}

// RPC debug terminal: "<method> [params]", always two-way, a fresh
// requestUUID per command, the reply printed as JSON.
function Terminal({ id }) {
  const [lines, setLines] = useState([]);
  const [text, setText] = useState("");
  const end = useRef(null);
  useEffect(() => { if (end.current) end.current.scrollTop = end.current.scrollHeight; }, [lines]);
  const run = async (e) => {
    e.preventDefault();
    const cmd = text.trim();
    if (!cmd) return;
    setText("");
    const space = cmd.search(/\s/);
    const method = space < 0 ? cmd : cmd.slice(0, space);
    const rest = space < 0 ? "" : cmd.slice(space + 1).trim();
    let params = {};
    if (rest) { try { params = JSON.parse(rest); } catch (x) { params = rest; } }
    setLines((l) => [...l, { kind: "cmd", text: `> ${cmd}` }]);
    try {
      const reply = await sendRpc(id, { oneway: false, method, params, requestUUID: uuid(), timeout: 500 });
      setLines((l) => [...l, { kind: "ok", text: JSON.stringify(reply) }]);
    } catch (x) {
      setLines((l) => [...l, { kind: "err", text: `Error: ${errorText(x)}` }]);
    }
  };
  return html`<article id="terminal">
    <header>RPC debug terminal <small class="muted">— type <code>method [params]</code>, e.g. <code>echo {"a": 1}</code></small></header>
    <pre class="terminal" ref=${end}>${lines.map((l) => html`<div class=${"t-" + l.kind}>${l.text}</div>`)}</pre>
    <form onSubmit=${run}><input value=${text} onInput=${(e) => setText(e.target.value)} placeholder="method [params]"
          aria-label="Terminal command" autocomplete="off" /></form>
  </article>`;
}

const STATUSES = ["", "QUEUED", "SENT", "DELIVERED", "SUCCESSFUL", "TIMEOUT", "EXPIRED", "FAILED"];

// The device's persistent calls (ThingsBoard's persistent table): newest
// first, filter by status, page, delete; rows follow status events live.
function PersistentTable({ id }) {
  const [page, setPage] = useState(0);
  const [status, setStatus] = useState("");
  const [err, setErr] = useState(null);
  const [data, error, reload] = useLoad(() => request("GET",
    `api/rpc/persistent/device/${id}?pageSize=10&page=${page}&sortProperty=createdTime&sortOrder=DESC` +
    (status ? `&rpcStatus=${status}` : "")), [id, page, status]);
  const [rows, setRows] = useState([]);
  useEffect(() => { setRows((data && data.data) || []); }, [data]);
  useEffect(() => subscribe((e) => {
    if (!e.type || !e.type.startsWith("RPC_") || !e.body || idOf(e.body.deviceId) !== id) return;
    if (e.type === "RPC_QUEUED") { reload(); return; }
    setRows((rs) => rs.map((r) => (idOf(r) === idOf(e.body) ? { ...r, ...e.body } : r)));
  }), [id, page, status]);
  const remove = async (rpcId) => {
    try { await request("DELETE", `api/rpc/persistent/${rpcId}`); reload(); } catch (x) { setErr(x); }
  };
  const isAdmin = session.authority === "TENANT_ADMIN";
  return html`<article id="persistent-table">
    <header class="page-head">
      <span>Persistent RPC</span>
      <select aria-label="Filter by status" value=${status} onChange=${(e) => { setPage(0); setStatus(e.target.value); }}>
        ${STATUSES.map((s) => html`<option value=${s}>${s || "every status"}</option>`)}
      </select>
    </header>
    <${ErrorNote} error=${error || err} />
    <figure><table class="striped">
      <thead><tr><th>RPC id</th><th>Type</th><th>Method</th><th>Status</th><th>Created</th><th>Expires</th><th>Response</th>${isAdmin && html`<th></th>`}</tr></thead>
      <tbody>${rows.map((r) => html`<tr key=${idOf(r)} data-rpc=${idOf(r)}>
        <td><code title=${idOf(r)}>${idOf(r).slice(0, 8)}</code></td>
        <td>${r.request && r.request.oneway ? "one-way" : "two-way"}</td>
        <td>${r.request && r.request.body && r.request.body.method}</td>
        <td><${Status} value=${r.status} /></td>
        <td>${fmtTime(r.createdTime)}</td>
        <td>${fmtTime(r.expirationTime)}</td>
        <td class="response">${r.response == null ? "" : fmtJson(r.response)}</td>
        ${isAdmin && html`<td><button class="secondary outline small" onClick=${() => remove(idOf(r))}>Delete</button></td>`}
      </tr>`)}
      ${data && !rows.length && html`<tr><td colspan="8" class="muted">No persistent calls${status ? ` with status ${status}` : ""}.</td></tr>`}
      </tbody>
    </table></figure>
    ${data && html`<${Pager} page=${page} totalPages=${data.totalPages} totalElements=${data.totalElements} onPage=${setPage} />`}
  </article>`;
}
