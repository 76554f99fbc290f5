// The console's shell: login, navigation by role, and a hash router.
import { render } from "preact";
import { useEffect, useState } from "preact/hooks";
import { login, logout, session } from "./api.js";
import { html, ErrorNote, navigate } from "./ui.js";
import { DevicesPage } from "./devices.js";
import { DevicePage } from "./device.js";
import { OverviewPage } from "./overview.js";
import { EventsPage } from "./events.js";
import { JobsPage, JobPage } from "./jobs.js";
import { TenantsPage, CustomersPage } from "./admin.js";

// What each role may open, in menu order; the first is its home page.
const MENUS = {
  SYS_ADMIN: [["#/overview", "Overview"], ["#/tenants", "Tenants"]],
  TENANT_ADMIN: [["#/overview", "Overview"], ["#/devices", "Devices"], ["#/jobs", "Jobs"],
                 ["#/events", "Events"], ["#/customers", "Customers"]],
  CUSTOMER_USER: [["#/devices", "Devices"], ["#/jobs", "Jobs"], ["#/events", "Events"]],
};

function route(hash) {
  const [page, id] = hash.replace(/^#\/?/, "").split("/");
  return { page: page || "", id };
}

function Login() {
  const [username, setUsername] = useState("");
  const [password, setPassword] = useState("");
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const submit = async (e) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      const user = await login(username.trim(), password);
      navigate(MENUS[user.authority][0][0]);
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  return html`<main class="container login">
    <article>
      <header><h1><span class="logo"></span> fleetrpc</h1><p class="muted">Sign in to see and call your fleet.</p></header>
      <form onSubmit=${submit} id="login">
        <label>Email <input type="email" name="username" autocomplete="username" required autofocus
          value=${username} onInput=${(e) => setUsername(e.target.value)} /></label>
        <label>Password <input type="password" name="password" autocomplete="current-password" required
          value=${password} onInput=${(e) => setPassword(e.target.value)} /></label>
        <${ErrorNote} error=${error} />
        <button type="submit" aria-busy=${busy}>Sign in</button>
      </form>
    </article>
  </main>`;
}

function Shell({ hash }) {
  const user = session.user;
  const menu = MENUS[user.authority] || [];
  const { page, id } = route(hash);
  const allowed = new Set(menu.map(([h]) => h.slice(2)));
  if (page === "device") allowed.add("device");
  if (page === "job") allowed.add("job");
  let body;
  if (!allowed.has(page)) {
    navigate(menu[0] ? menu[0][0] : "#/");
    return null;
  }
  switch (page) {
    case "overview": body = html`<${OverviewPage} />`; break;
    case "devices": body = html`<${DevicesPage} />`; break;
    case "device": body = html`<${DevicePage} id=${id} key=${id} />`; break;
    case "jobs": body = html`<${JobsPage} />`; break;
    case "job": body = html`<${JobPage} id=${id} key=${id} />`; break;
    case "events": body = html`<${EventsPage} />`; break;
    case "tenants": body = html`<${TenantsPage} />`; break;
    case "customers": body = html`<${CustomersPage} />`; break;
  }
  const name = [user.firstName, user.lastName].filter(Boolean).join(" ") || user.email;
  return html`<div>
    <nav class="container-fluid topbar">
      <ul><li><a href=${menu[0][0]} class="brand"><span class="logo"></span> fleetrpc</a></li></ul>
      <ul>${menu.map(([h, label]) => html`<li><a href=${h} aria-current=${h.slice(2) === page || (h === "#/devices" && page === "device") || (h === "#/jobs" && page === "job") ? "page" : undefined}>${label}</a></li>`)}</ul>
      <ul>
        <li><small class="muted" id="whoami">${name} · ${user.authority.replace("_", " ").toLowerCase()}</small></li>
        <li><button class="secondary outline small" onClick=${async () => { await logout(); navigate("#/login"); }}>Sign out</button></li>
      </ul>
    </nav>
    <main class="container">${body}</main>
  </div>`;
}

function App() {
  const [hash, setHash] = useState(location.hash);
  const [, setVersion] = useState(0);
  useEffect(() => {
    const onHash = () => setHash(location.hash);
    window.addEventListener("hashchange", onHash);
    const off = session.onChange(() => setVersion((v) => v + 1));
    return () => { window.removeEventListener("hashchange", onHash); off(); };
  }, []);
  if (!session.token || !session.user) return html`<${Login} />`;
  return html`<${Shell} hash=${hash} />`;
}

render(html`<${App} />`, document.getElementById("app"));
