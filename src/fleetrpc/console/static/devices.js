// Devices: a paged, searchable list with live online state; create a device
// and see how to connect it.  Paging and search run on the server
// (ThingsBoard's deviceInfos endpoints), so a tenant of 10,000 devices
// costs the browser one page.
import { useEffect, useState } from "preact/hooks";
import { request, session, subscribe, idOf, NULL_UUID } from "./api.js";
import { html, fmtAgo, navigate, Online, Pager, ErrorNote, useLoad, Modal } from "./ui.js";

const PAGE_SIZE = 20;

function listPath(page, search) {
  const q = `pageSize=${PAGE_SIZE}&page=${page}&sortProperty=name&sortOrder=ASC` +
    (search ? `&textSearch=${encodeURIComponent(search)}` : "");
  const user = session.user;
  if (user.authority === "CUSTOMER_USER") return `api/customer/${idOf(user.customerId)}/deviceInfos?${q}`;
  return `api/tenant/deviceInfos?${q}`;
}

export function DevicesPage() {
  const [page, setPage] = useState(0);
  const [search, setSearch] = useState("");
  const [typed, setTyped] = useState("");
  const [creating, setCreating] = useState(false);
  const [created, setCreated] = useState(null);
  const [data, error, reload] = useLoad(() => request("GET", listPath(page, search)), [page, search]);
  const [live, setLive] = useState({}); // deviceId -> {active, ts}

  useEffect(() => subscribe((e) => {
    if (e.type === "PRESENCE") {
      setLive((m) => ({ ...m, [e.deviceId]: { active: e.online, ts: e.ts } }));
    }
  }), []);

  // Search as you type, once typing pauses.
  useEffect(() => {
    const id = setTimeout(() => { setPage(0); setSearch(typed.trim()); }, 250);
    return () => clearTimeout(id);
  }, [typed]);

  const rows = (data && data.data) || [];
  const isAdmin = session.authority === "TENANT_ADMIN";
  return html`<section>
    <header class="page-head">
      <h2>Devices</h2>
      ${isAdmin && html`<button onClick=${() => setCreating(true)}>+ Add device</button>`}
    </header>
    <input type="search" placeholder="Search devices by name" aria-label="Search devices"
           value=${typed} onInput=${(e) => setTyped(e.target.value)} />
    <${ErrorNote} error=${error} />
    <figure>
    <table class="striped" id="devices">
      <thead><tr><th>Name</th><th>State</th><th>Type</th><th>Label</th><th>Customer</th><th>Last activity</th></tr></thead>
      <tbody>
        ${rows.map((d) => {
          const id = idOf(d);
          const l = live[id];
          const active = l ? l.active : d.active;
          const last = l ? Math.max(l.ts || 0, d.lastActivityTime || 0) : d.lastActivityTime;
          return html`<tr key=${id} data-device=${d.name} class="clickable" onClick=${() => navigate(`#/device/${id}`)}>
            <td><a href=${`#/device/${id}`}>${d.name}</a></td>
            <td><${Online} online=${active} /></td>
            <td>${d.type}</td>
            <td>${d.label || ""}</td>
            <td>${d.customerTitle || (idOf(d.customerId) === NULL_UUID ? "" : "…")}</td>
            <td title=${last ? new Date(last).toLocaleString() : ""}>${fmtAgo(last)}</td>
          </tr>`;
        })}
        ${data && !rows.length && html`<tr><td colspan="6" class="muted">No devices${search ? ` match “${search}”` : ""}.</td></tr>`}
      </tbody>
    </table>
    </figure>
    ${data && html`<${Pager} page=${page} totalPages=${data.totalPages} totalElements=${data.totalElements} onPage=${setPage} />`}
    ${creating && html`<${CreateDevice} onClose=${() => setCreating(false)}
        onCreated=${(d) => { setCreating(false); setCreated(d); reload(); }} />`}
    ${created && html`<${Connect} device=${created} onClose=${() => setCreated(null)} />`}
  </section>`;
}

function CreateDevice({ onClose, onCreated }) {
  const [form, setForm] = useState({ name: "", type: "default", label: "" });
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const set = (k) => (e) => setForm({ ...form, [k]: e.target.value });
  const submit = async (e) => {
    e.preventDefault();
    setBusy(true);
    try {
      const body = { name: form.name.trim(), type: form.type.trim() || "default" };
      if (form.label.trim()) body.label = form.label.trim();
      const device = await request("POST", "api/device", body);
      const creds = await request("GET", `api/device/${idOf(device)}/credentials`);
      onCreated({ device, token: creds.credentialsId });
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  return html`<${Modal} title="Add a device" onClose=${onClose}>
    <form onSubmit=${submit} id="create-device">
      <label>Name <input name="name" required value=${form.name} onInput=${set("name")} /></label>
      <label>Type <input name="type" value=${form.type} onInput=${set("type")} /></label>
      <label>Label <input name="label" value=${form.label} onInput=${set("label")} /></label>
      <${ErrorNote} error=${error} />
      <button type="submit" aria-busy=${busy}>Create</button>
    </form>
  </${Modal}>`;
}

export function connectCommand(deviceId, token) {
  const host = location.hostname || "127.0.0.1";
  return `fleetrpc simulate --device ${deviceId} --token ${token} --url mqtt://${host}:1883`;
}

export function Connect({ device, onClose }) {
  const id = idOf(device.device);
  return html`<${Modal} title=${`Device “${device.device.name}” created`} onClose=${onClose}>
    <p>Its access token (the MQTT username it connects with):</p>
    <pre id="access-token">${device.token}</pre>
    <p>Connect a simulated device with this token (it answers <code>getValue</code>,
      <code>setValue</code>, <code>rpcCommand</code> and echoes anything else):</p>
    <pre id="connect-command">${connectCommand(id, device.token)}</pre>
    <footer><button onClick=${() => { onClose(); navigate(`#/device/${id}`); }}>Open the device</button></footer>
  </${Modal}>`;
}
