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
      <${RpcButton} id=${id} type=${device.type} />
      <${RoundSwitch} id=${id} type=${device.type} />
      <${SwitchControl} id=${id} type=${device.type} />
      <${Knob} id=${id} type=${device.type} />
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

// -- widget settings -----------------------------------------------------------
// What ThingsBoard keeps in each control widget's advanced settings, under its
// names.  Here they are kept per device type in the browser's localStorage: a
// fleet has many devices of one type, answering the same methods.  Only
// settings the form accepted are stored, and stored ones are checked again on
// load, so what a widget sends is always well formed.

const SETTINGS_KEY = "fleetrpc.widgets.";

// switchRpcDefaultSettings() (round_switch.json, switch_control.json); the
// parse and convert functions in their plain forms: the reply key read (empty:
// the reply itself, as `data ? true : false`) and a params template ($value:
// the boolean, as `return value;`).
const SWITCH_DEFAULTS = {
  retrieveValueMethod: "rpc", getValueMethod: "getValue", parseValueKey: "",
  setValueMethod: "setValue", convertValueTemplate: "$value", requestTimeout: 500,
};

const WIDGET_DEFAULTS = {
  rpcButton: { methodName: "rpcCommand", methodParams: "{}", oneWayElseTwoWay: true, requestTimeout: 5000 },
  roundSwitch: SWITCH_DEFAULTS,
  switchControl: SWITCH_DEFAULTS,
  // knob.component.models.ts: initial value 50, one-way setValue
  knob: { getValueMethod: "getValue", setValueMethod: "setValue", minValue: 0, maxValue: 100, requestTimeout: 5000 },
};

const METHOD_FIELDS = ["methodName", "getValueMethod", "setValueMethod"];

// The params the switch sends for `value`: the template with $value replaced.
function convertSwitchValue(template, value) {
  return JSON.parse(template.split("$value").join(JSON.stringify(!!value)));
}

// The switch's state from a reply: the key's value (a dotted path), truthy or not.
function parseSwitchValue(reply, key) {
  let v = reply;
  for (const part of key ? key.split(".") : []) v = v != null && typeof v === "object" ? v[part] : undefined;
  return !!v;
}

// Draft (form strings or stored values) -> { settings, errors } for `widget`.
function checkSettings(widget, draft) {
  const settings = {};
  const errors = {};
  for (const [name, def] of Object.entries(WIDGET_DEFAULTS[widget])) {
    const raw = draft[name];
    if (typeof def === "boolean") {
      settings[name] = raw === true || raw === "true";
    } else if (typeof def === "number") {
      const n = typeof raw === "string" && raw.trim() === "" ? NaN : Number(raw);
      if (!Number.isFinite(n)) errors[name] = "Enter a number.";
      settings[name] = n;
    } else {
      settings[name] = typeof raw === "string" ? raw.trim() : "";
    }
  }
  for (const name of METHOD_FIELDS) {
    if (name in settings && !settings[name]) errors[name] = "Enter a method name.";
  }
  if ("methodParams" in settings) {
    try { JSON.parse(settings.methodParams); }
    catch (e) { errors.methodParams = `Not valid JSON, so it is not sent (${e.message}).`; }
  }
  if ("convertValueTemplate" in settings) {
    for (const v of [true, false]) {
      try { convertSwitchValue(settings.convertValueTemplate, v); }
      catch (e) { errors.convertValueTemplate = `With $value as ${v} this is not valid JSON (${e.message}).`; break; }
    }
  }
  if ("retrieveValueMethod" in settings && !["rpc", "none"].includes(settings.retrieveValueMethod)) {
    errors.retrieveValueMethod = "Choose rpc or none.";
  }
  if (!errors.requestTimeout && !(Number.isInteger(settings.requestTimeout) && settings.requestTimeout >= 0)) {
    errors.requestTimeout = "Enter whole milliseconds, 0 or more.";
  }
  if ("maxValue" in settings && !errors.minValue && !errors.maxValue && settings.maxValue <= settings.minValue) {
    errors.maxValue = "Must be more than the minimum.";
  }
  return { settings, errors };
}

function readStore(type) {
  try { return JSON.parse(localStorage.getItem(SETTINGS_KEY + type)) || {}; } catch (e) { return {}; }
}

function loadSettings(type, widget) {
  const stored = readStore(type)[widget];
  if (!stored) return WIDGET_DEFAULTS[widget];
  const { settings, errors } = checkSettings(widget, { ...WIDGET_DEFAULTS[widget], ...stored });
  return Object.keys(errors).length ? WIDGET_DEFAULTS[widget] : settings; // a damaged entry: defaults
}

function storeSettings(type, widget, settings) {
  const all = readStore(type);
  if (settings) all[widget] = settings; else delete all[widget];
  if (Object.keys(all).length) localStorage.setItem(SETTINGS_KEY + type, JSON.stringify(all));
  else localStorage.removeItem(SETTINGS_KEY + type);
}

// [settings, save, reset] for one widget on devices of `type`.
function useWidgetSettings(type, widget) {
  const [settings, setSettings] = useState(() => loadSettings(type, widget));
  const save = (s) => { storeSettings(type, widget, s); setSettings(s); };
  const reset = () => { storeSettings(type, widget, null); setSettings(WIDGET_DEFAULTS[widget]); };
  return [settings, save, reset];
}

const CALL_OPTIONS = [["true", "one-way"], ["false", "two-way (waits for the reply)"]];
const RETRIEVE_OPTIONS = [["rpc", "rpc: get value method on load"], ["none", "none: start off"]];
const TIMEOUT_HINT = "ms; the server raises it to its minimum";

// [name, label, kind, options or hint]
const FIELDS = {
  rpcButton: [
    ["methodName", "Method", "text"],
    ["methodParams", "Params (JSON)", "json", "sent as parsed JSON"],
    ["oneWayElseTwoWay", "Call", "select", CALL_OPTIONS],
    ["requestTimeout", "Request timeout", "number", TIMEOUT_HINT],
  ],
  switch: [
    ["retrieveValueMethod", "Retrieve value", "select", RETRIEVE_OPTIONS],
    ["getValueMethod", "Get value method", "text"],
    ["parseValueKey", "Parse value: key of the reply", "text", "empty: the whole reply; on when truthy"],
    ["setValueMethod", "Set value method", "text"],
    ["convertValueTemplate", "Convert value: params", "json", "JSON; $value becomes true or false"],
    ["requestTimeout", "Request timeout", "number", TIMEOUT_HINT],
  ],
  knob: [
    ["getValueMethod", "Get value method", "text"],
    ["setValueMethod", "Set value method", "text"],
    ["minValue", "Minimum", "number"],
    ["maxValue", "Maximum", "number"],
    ["requestTimeout", "Request timeout", "number", TIMEOUT_HINT],
  ],
};

function toDraft(settings) {
  return Object.fromEntries(Object.entries(settings).map(([k, v]) => [k, String(v)]));
}

// The form behind a widget's settings toggle.  Nothing is stored (and so
// nothing sent) until every field is valid.
function SettingsPanel({ widget, fields, type, settings, onSave, onReset, onClose }) {
  const [draft, setDraft] = useState(() => toDraft(settings));
  const [tried, setTried] = useState(false);
  const [note, setNote] = useState(null);
  const { errors } = checkSettings(widget, draft);
  const shown = tried ? errors : {};
  const set = (name, value) => { setDraft((d) => ({ ...d, [name]: value })); setNote(null); };
  const submit = (e) => {
    e.preventDefault();
    setTried(true);
    const checked = checkSettings(widget, draft);
    if (Object.keys(checked.errors).length) return;
    onSave(checked.settings);
    onClose();
  };
  const reset = () => {
    onReset();
    setDraft(toDraft(WIDGET_DEFAULTS[widget]));
    setTried(false);
    setNote("ThingsBoard's defaults restored.");
  };
  const noRetrieve = draft.retrieveValueMethod === "none";
  const field = ([name, label, kind, extra]) => {
    const err = shown[name];
    const errId = `${widget}-${name}-error`;
    const common = {
      name, "aria-invalid": err ? "true" : undefined, "aria-describedby": err ? errId : undefined,
      disabled: noRetrieve && (name === "getValueMethod" || name === "parseValueKey"),
    };
    const input = kind === "select"
      ? html`<select ...${common} value=${draft[name]} onChange=${(e) => set(name, e.target.value)}>
          ${extra.map(([v, text]) => html`<option value=${v}>${text}</option>`)}</select>`
      : html`<input ...${common} type=${kind === "number" ? "number" : "text"} value=${draft[name]}
          class=${kind === "json" ? "mono" : ""} autocomplete="off" spellcheck="false"
          onInput=${(e) => set(name, e.target.value)} />`;
    return html`<label>${label}${kind !== "select" && extra ? html` <small class="muted">(${extra})</small>` : ""}
      ${input}
      ${err && html`<small class="error" id=${errId} role="alert">${err}</small>`}</label>`;
  };
  return html`<form class="widget-settings" onSubmit=${submit} novalidate>
    <p class="muted settings-scope">For every device of type <strong>${type}</strong>, in this browser.</p>
    ${fields.map(field)}
    ${tried && Object.keys(errors).length > 0 && html`<p class="error" role="alert">Not saved: correct the fields marked.</p>`}
    ${note && html`<p class="muted" role="status">${note}</p>`}
    <div class="settings-actions">
      <button type="submit" class="small">Save</button>
      <button type="button" class="secondary outline small" onClick=${onClose}>Cancel</button>
    </div>
    <button type="button" class="secondary outline small reset-defaults" onClick=${reset}>Reset to ThingsBoard's defaults</button>
  </form>`;
}

// A "settings" icon (sliders), drawn so it needs no icon font.
const SETTINGS_ICON = html`<svg viewBox="0 0 24 24" width="18" height="18" aria-hidden="true" focusable="false">
  <path d="M4 6h16M4 12h16M4 18h16" stroke="currentColor" stroke-width="2" stroke-linecap="round" fill="none" />
  <circle cx="9" cy="6" r="2.6" /><circle cx="15" cy="12" r="2.6" /><circle cx="7" cy="18" r="2.6" /></svg>`;

// A control widget's card: its body, or its settings form while the toggle is
// on.  The toggle comes after the body in the page (it is drawn in the
// header's corner), so the widget's own control stays its first button.
function Widget({ domId, title, widget, fields, type, settingsState, children }) {
  const [open, setOpen] = useState(false);
  const [settings, save, reset] = settingsState;
  return html`<article class=${"widget" + (open ? " configuring" : "")} id=${domId}>
    <header>${title}</header>
    ${open
      ? html`<${SettingsPanel} widget=${widget} fields=${fields} type=${type} settings=${settings}
               onSave=${save} onReset=${reset} onClose=${() => setOpen(false)} />`
      : children}
    <button type="button" class="widget-gear" aria-label=${`${title} settings`} title="Settings"
            aria-expanded=${open ? "true" : "false"} onClick=${() => setOpen(!open)}>${SETTINGS_ICON}</button>
  </article>`;
}

// -- the control widgets ---------------------------------------------------------

// RPC button (control_widgets.rpcbutton): by default method rpcCommand,
// params {}, one-way, requestTimeout 5000.
function RpcButton({ id, type }) {
  const state = useWidgetSettings(type, "rpcButton");
  const s = state[0];
  const [persistent, setPersistent] = useState(false);
  const [out, setOut] = useState(null);
  const [busy, setBusy] = useState(false);
  const oneway = s.oneWayElseTwoWay;
  const press = async () => {
    setBusy(true);
    setOut(null);
    const call = { oneway, method: s.methodName, params: JSON.parse(s.methodParams), timeout: s.requestTimeout };
    try {
      if (persistent) {
        const rpc = await sendPersistent(id, call, { onStatus: (r) => setOut({ text: r.status }) });
        setOut(rpc.status === "FAILED"
          ? { error: (rpc.response && rpc.response.error) || "FAILED" }
          : { text: `${rpc.status}${rpc.response ? ": " + fmtJson(rpc.response) : ""}` });
      } else {
        const reply = await sendRpc(id, call);
        setOut({ text: oneway ? "sent" : fmtJson(reply) });
      }
    } catch (err) {
      setOut({ error: errorText(err) });
    } finally {
      setBusy(false);
    }
  };
  return html`<${Widget} domId="rpc-button" title="RPC button" widget="rpcButton" fields=${FIELDS.rpcButton}
                         type=${type} settingsState=${state}>
    <button onClick=${press} aria-busy=${busy} disabled=${busy}>Send RPC</button>
    <small class="call-summary" title="what the button sends">
      <code>${s.methodName} ${s.methodParams}</code> · ${oneway ? "one-way" : "two-way"}</small>
    <label><input type="checkbox" role="switch" checked=${persistent} onChange=${(e) => setPersistent(e.target.checked)} /> persistent</label>
    <output class=${out && out.error ? "error" : ""}>${out ? out.error || out.text : ""}</output>
  <//>`;
}

// The switches' RPC (switch.component.ts, round-switch.component.ts): with
// retrieveValueMethod "rpc", on load a two-way get value call with params
// null, the reply parsed to on or off; on change a one-way set value call
// with the converted boolean.
function useSwitchRpc(id, s) {
  const [value, setValue] = useState(null);
  const [err, setErr] = useState(null);
  const load = async () => {
    if (s.retrieveValueMethod === "none") { setValue(false); setErr(null); return; } // initialValue false
    try {
      const reply = await sendRpc(id, { oneway: false, method: s.getValueMethod, params: null, timeout: s.requestTimeout });
      setValue(parseSwitchValue(reply, s.parseValueKey));
      setErr(null);
    } catch (e) { setErr(errorText(e)); }
  };
  useEffect(() => { load(); }, [id, s]);
  const toggle = async () => {
    const next = !value;
    setValue(next);
    try {
      await sendRpc(id, { oneway: true, method: s.setValueMethod, params: convertSwitchValue(s.convertValueTemplate, next),
                          timeout: s.requestTimeout });
      setErr(null);
    } catch (e) { setValue(!next); setErr(errorText(e)); }
  };
  const readBack = s.retrieveValueMethod === "none" ? null
    : html`<small><a href="#" onClick=${(e) => { e.preventDefault(); load(); }}>read back</a></small>`;
  return { value, err, toggle, readBack };
}

// Round switch: by default getValue (reply read as `data ? true : false`)
// and setValue with the bare boolean, requestTimeout 500.
function RoundSwitch({ id, type }) {
  const state = useWidgetSettings(type, "roundSwitch");
  const { value, err, toggle, readBack } = useSwitchRpc(id, state[0]);
  return html`<${Widget} domId="round-switch" title="Round switch" widget="roundSwitch" fields=${FIELDS.switch}
                         type=${type} settingsState=${state}>
    <button class=${"round-switch " + (value ? "on" : "off")} aria-pressed=${!!value} onClick=${toggle}
            disabled=${value === null && !err} title=${state[0].setValueMethod}>
      <span>${value === null ? "…" : value ? "ON" : "OFF"}</span>
    </button>
    ${readBack}
    ${err && html`<output class="error">${err}</output>`}
  <//>`;
}

// Switch control (control_widgets.switch_control): a slide toggle with OFF
// and ON labels; the same RPC as the round switch.
function SwitchControl({ id, type }) {
  const state = useWidgetSettings(type, "switchControl");
  const { value, err, toggle, readBack } = useSwitchRpc(id, state[0]);
  return html`<${Widget} domId="switch-control" title="Switch control" widget="switchControl" fields=${FIELDS.switch}
                         type=${type} settingsState=${state}>
    <div class="slide-row">
      <span class=${value ? "muted" : ""}>OFF</span>
      <button type="button" role="switch" class="slide-toggle" aria-checked=${value ? "true" : "false"}
              aria-label="Switch control" onClick=${toggle} disabled=${value === null && !err}
              title=${state[0].setValueMethod}><span class="thumb"></span></button>
      <span class=${value ? "" : "muted"}>ON</span>
    </div>
    ${readBack}
    ${err && html`<output class="error">${err}</output>`}
  <//>`;
}

// Knob control: getValue (two-way, params null) on load, default 50; each
// settled change sends a one-way setValue with the number.
function Knob({ id, type }) {
  const state = useWidgetSettings(type, "knob");
  const s = state[0];
  const { minValue: min, maxValue: max } = s;
  const [value, setValue] = useState(50);
  const [sent, setSent] = useState(null);
  const [err, setErr] = useState(null);
  const timer = useRef(null);
  const load = async () => {
    try {
      const v = await sendRpc(id, { oneway: false, method: s.getValueMethod, params: null, timeout: s.requestTimeout });
      if (typeof v === "number") setValue(v);
      setErr(null);
    } catch (e) { setErr(errorText(e)); }
  };
  useEffect(() => { load(); }, [id, s]);
  const change = (v) => {
    setValue(v);
    clearTimeout(timer.current);
    timer.current = setTimeout(async () => {
      try {
        await sendRpc(id, { oneway: true, method: s.setValueMethod, params: v, timeout: s.requestTimeout });
        setSent(v);
        setErr(null);
      } catch (e) { setErr(errorText(e)); }
    }, 200);
  };
  const shown = Math.min(max, Math.max(min, value));
  const angle = -135 + ((shown - min) / (max - min)) * 270;
  return html`<${Widget} domId="knob" title="Knob" widget="knob" fields=${FIELDS.knob} type=${type} settingsState=${state}>
    <svg viewBox="0 0 100 100" class="knob" aria-hidden="true">
      <circle cx="50" cy="50" r="40" class="knob-face" />
      <line x1="50" y1="50" x2="50" y2="16" class="knob-needle" transform=${`rotate(${angle} 50 50)`} />
      <text x="50" y="92" text-anchor="middle" class="knob-value">${value}</text>
    </svg>
    <input type="range" min=${min} max=${max} value=${shown} aria-label="Knob value"
           onInput=${(e) => change(Number(e.target.value))} />
    <small>${sent !== null ? `set to ${sent}` : ""} <a href="#" onClick=${(e) => { e.preventDefault(); load(); }}>read back</a></small>
    ${err && html`<output class="error">${err}</output>`}
  <//>`;
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
