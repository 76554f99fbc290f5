// Who is who: tenants (for the system administrator) and customers (for a
// tenant administrator), with their users.
import { useState } from "preact/hooks";
import { request, idOf } from "./api.js";
import { html, fmtTime, Pager, ErrorNote, useLoad } from "./ui.js";

function EntityPage({ title, listPath, createPath, userAuthority, ownerKey }) {
  const [page, setPage] = useState(0);
  const [data, error, reload] = useLoad(() => request("GET", `${listPath}?pageSize=20&page=${page}`), [page]);
  const [name, setName] = useState("");
  const [err, setErr] = useState(null);
  const [userFor, setUserFor] = useState(null);
  const create = async (e) => {
    e.preventDefault();
    try { await request("POST", createPath, { title: name.trim() }); setName(""); reload(); } catch (x) { setErr(x); }
  };
  return html`<section>
    <header class="page-head"><h2>${title}</h2></header>
    <form class="inline" onSubmit=${create}>
      <input required placeholder="Title" value=${name} onInput=${(e) => setName(e.target.value)} aria-label="Title" />
      <button type="submit">Add</button>
    </form>
    <${ErrorNote} error=${error || err} />
    <figure><table class="striped">
      <thead><tr><th>Title</th><th>Id</th><th>Created</th><th></th></tr></thead>
      <tbody>${data && data.data.map((t) => html`<tr key=${idOf(t)}>
        <td>${t.title}</td><td><code>${idOf(t)}</code></td><td>${fmtTime(t.createdTime)}</td>
        <td><button class="secondary outline small" onClick=${() => setUserFor(t)}>Add user</button></td></tr>`)}</tbody>
    </table></figure>
    ${data && html`<${Pager} page=${page} totalPages=${data.totalPages} totalElements=${data.totalElements} onPage=${setPage} />`}
    ${userFor && html`<${AddUser} owner=${userFor} authority=${userAuthority} ownerKey=${ownerKey}
        onDone=${() => setUserFor(null)} />`}
  </section>`;
}

function AddUser({ owner, authority, ownerKey, onDone }) {
  const [f, setF] = useState({ email: "", firstName: "", lastName: "", password: "" });
  const [err, setErr] = useState(null);
  const [done, setDone] = useState(null);
  const set = (k) => (e) => setF({ ...f, [k]: e.target.value });
  const submit = async (e) => {
    e.preventDefault();
    try {
      const entity = ownerKey === "tenantId" ? "TENANT" : "CUSTOMER";
      const body = { email: f.email, authority, firstName: f.firstName || null, lastName: f.lastName || null,
                     [ownerKey]: { entityType: entity, id: idOf(owner) } };
      const user = await request("POST", "api/user?sendActivationMail=false", body);
      if (f.password) {
        const link = await request("GET", `api/user/${idOf(user)}/activationLink`);
        const token = String(link).split("activateToken=")[1];
        await request("POST", "api/noauth/activate", { activateToken: token, password: f.password });
      }
      setDone(user);
    } catch (x) { setErr(x); }
  };
  return html`<dialog open><article>
    <header><button aria-label="Close" rel="prev" onClick=${onDone}></button>
      <p><strong>New user of ${owner.title}</strong></p></header>
    ${done ? html`<p>User <strong>${done.email}</strong> created${f.password ? " and activated" : ""}.</p>
               <button onClick=${onDone}>Close</button>`
      : html`<form onSubmit=${submit}>
      <label>Email <input type="email" required value=${f.email} onInput=${set("email")} /></label>
      <div class="grid"><label>First name <input value=${f.firstName} onInput=${set("firstName")} /></label>
        <label>Last name <input value=${f.lastName} onInput=${set("lastName")} /></label></div>
      <label>Password <input type="password" minlength="6" value=${f.password} onInput=${set("password")}
        placeholder="leave empty to activate later" /></label>
      <${ErrorNote} error=${err} />
      <button type="submit">Create user</button></form>`}
  </article></dialog>`;
}

export function TenantsPage() {
  return html`<${EntityPage} title="Tenants" listPath="api/tenants" createPath="api/tenant"
    userAuthority="TENANT_ADMIN" ownerKey="tenantId" />`;
}

export function CustomersPage() {
  return html`<${EntityPage} title="Customers" listPath="api/customers" createPath="api/customer"
    userAuthority="CUSTOMER_USER" ownerKey="customerId" />`;
}
