// Small shared pieces of the console: templates, formatting, paging, badges.
import { h } from "preact";
import { useEffect, useRef, useState } from "preact/hooks";
import htm from "htm";

export const html = htm.bind(h);

export function navigate(hash) {
  if (location.hash !== hash) location.hash = hash;
}

export function fmtTime(ms) {
  if (!ms) return "—";
  const d = new Date(ms);
  const today = new Date();
  const sameDay = d.toDateString() === today.toDateString();
  return sameDay ? d.toLocaleTimeString() : d.toLocaleString();
}

export function fmtAgo(ms) {
  if (!ms) return "never";
  const s = Math.max(0, (Date.now() - ms) / 1000);
  if (s < 5) return "just now";
  if (s < 60) return `${Math.floor(s)} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

export function fmtJson(value) {
  if (value === undefined) return "";
  try { return JSON.stringify(value); } catch (e) { return String(value); }
}

// Status colours as ThingsBoard's persistent table uses them (rpc.models.ts).
const STATUS_CLASS = {
  QUEUED: "st-neutral", SENT: "st-good", DELIVERED: "st-good", SUCCESSFUL: "st-good",
  TIMEOUT: "st-warn", EXPIRED: "st-bad", FAILED: "st-bad", DELETED: "st-neutral",
  RUNNING: "st-good", COMPLETED: "st-good", ABORTED: "st-bad", CANCELLED: "st-warn",
  IN_PROGRESS: "st-neutral", SUCCEEDED: "st-good", TIMED_OUT: "st-warn", OFFLINE: "st-warn",
  SKIPPED: "st-neutral",
};

export function Status({ value }) {
  return html`<span class="status ${STATUS_CLASS[value] || "st-neutral"}">${value}</span>`;
}

export function Online({ online }) {
  return online
    ? html`<span class="dot online" title="online">online</span>`
    : html`<span class="dot offline" title="offline">offline</span>`;
}

export function Pager({ page, totalPages, totalElements, onPage }) {
  if (!totalPages || totalPages <= 1) {
    return html`<p class="pager muted">${totalElements ?? 0} in all</p>`;
  }
  return html`<nav class="pager">
    <button class="secondary outline" disabled=${page <= 0} onClick=${() => onPage(page - 1)}>‹ Previous</button>
    <span>page ${page + 1} of ${totalPages} · ${totalElements} in all</span>
    <button class="secondary outline" disabled=${page + 1 >= totalPages} onClick=${() => onPage(page + 1)}>Next ›</button>
  </nav>`;
}

export function ErrorNote({ error }) {
  if (!error) return null;
  return html`<p class="error" role="alert">${error.message || String(error)}</p>`;
}

// Run an async loader on mount and whenever deps change: [data, error, reload].
export function useLoad(loader, deps) {
  const [state, setState] = useState({ data: null, error: null });
  const seq = useRef(0);
  const run = () => {
    const mine = ++seq.current;
    loader().then(
      (data) => mine === seq.current && setState({ data, error: null }),
      (error) => mine === seq.current && setState((s) => ({ data: s.data, error })),
    );
  };
  useEffect(run, deps);
  return [state.data, state.error, run];
}

export function useInterval(fn, ms) {
  const saved = useRef(fn);
  saved.current = fn;
  useEffect(() => {
    const id = setInterval(() => saved.current(), ms);
    return () => clearInterval(id);
  }, [ms]);
}

export function Modal({ title, onClose, children }) {
  return html`<dialog open>
    <article>
      <header>
        <button aria-label="Close" rel="prev" onClick=${onClose}></button>
        <p><strong>${title}</strong></p>
      </header>
      ${children}
    </article>
  </dialog>`;
}

export function uuid() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const hex = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}
