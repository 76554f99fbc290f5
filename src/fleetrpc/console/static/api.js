// The console's one door to the server: ThingsBoard's REST API with its JWT
// rules, and the live event stream.
//
// Tokens live in localStorage, as ThingsBoard's UI keeps them.  A 401 with
// errorCode 11 (token expired) is answered by one refresh through
// POST /api/auth/token and a retry; any other 401 (errorCode 10) logs out.

const KEY = "fleetrpc.auth";
const listeners = new Set();

export const session = {
  token: null,
  refreshToken: null,
  user: null,
  load() {
    try {
      Object.assign(this, JSON.parse(localStorage.getItem(KEY)) || {});
    } catch (e) { /* a damaged entry is a logged-out session */ }
  },
  save() {
    localStorage.setItem(KEY, JSON.stringify({ token: this.token, refreshToken: this.refreshToken, user: this.user }));
    listeners.forEach((fn) => fn(this));
  },
  clear() {
    this.token = this.refreshToken = this.user = null;
    localStorage.removeItem(KEY);
    listeners.forEach((fn) => fn(this));
  },
  onChange(fn) { listeners.add(fn); return () => listeners.delete(fn); },
  get authority() { return this.user && this.user.authority; },
};
session.load();

export class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

let refreshing = null;

async function refresh() {
  if (!session.refreshToken) throw new ApiError(401, "not logged in");
  if (!refreshing) {
    refreshing = fetch("api/auth/token", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ refreshToken: session.refreshToken }),
    }).then(async (r) => {
      if (!r.ok) throw new ApiError(r.status, "session expired");
      const pair = await r.json();
      session.token = pair.token;
      session.refreshToken = pair.refreshToken;
      session.save();
    }).finally(() => { refreshing = null; });
  }
  return refreshing;
}

function parse(text) {
  if (!text) return null;
  try { return JSON.parse(text); } catch (e) { return text; }
}

// request("GET", "api/tenant/devices?pageSize=10&page=0") -> parsed JSON (or text, or null)
export async function request(method, path, body, { retry = true } = {}) {
  const headers = {};
  if (session.token) headers["X-Authorization"] = `Bearer ${session.token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path.replace(/^\//, ""), {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await resp.text();
  const data = parse(text);
  if (resp.status === 401 && data && data.errorCode === 11 && retry && session.refreshToken) {
    try {
      await refresh();
    } catch (e) {
      session.clear();
      throw new ApiError(401, "Your session has expired; please log in again.");
    }
    return request(method, path, body, { retry: false });
  }
  if (resp.status === 401 && path !== "api/auth/login") {
    session.clear();
  }
  if (!resp.ok) {
    const message = (data && data.message) || (typeof data === "string" && data) || describe(resp.status);
    throw new ApiError(resp.status, message, data);
  }
  return data;
}

// What the RPC endpoints' empty error bodies mean (ThingsBoard's statuses).
export function describe(status) {
  return {
    400: "bad request", 401: "not authenticated", 403: "not allowed", 404: "not found",
    406: "the device's reply is not JSON", 408: "the device did not answer in time",
    409: "the device is not connected", 413: "request too large", 429: "too many requests",
    504: "request timeout (the device did not answer, or is not connected)",
  }[status] || `HTTP ${status}`;
}

export async function login(username, password) {
  const pair = await request("POST", "api/auth/login", { username, password }, { retry: false });
  session.token = pair.token;
  session.refreshToken = pair.refreshToken;
  session.user = await request("GET", "api/auth/user");
  session.save();
  return session.user;
}

export async function logout() {
  try { await request("POST", "api/auth/logout", undefined, { retry: false }); } catch (e) { /* gone anyway */ }
  session.clear();
}

export const NULL_UUID = "13814000-1dd2-11b2-8080-808080808080";

export function idOf(entity) {
  return entity && entity.id && (entity.id.id || entity.id);
}

// The live stream of events this user may see: RPC status changes, presence
// changes, job progress.  One EventSource for the whole console, shared by
// every page; it reconnects by itself (and re-authenticates on a new token).
const subscribers = new Set();
let source = null;
let sourceToken = null;

function openStream() {
  if (!session.token) return;
  if (source && sourceToken === session.token) return;
  if (source) source.close();
  sourceToken = session.token;
  source = new EventSource(`api/console/events?token=${encodeURIComponent(session.token)}`);
  source.onmessage = (msg) => {
    let event;
    try { event = JSON.parse(msg.data); } catch (e) { return; }
    subscribers.forEach((fn) => { try { fn(event); } catch (e) { console.error(e); } });
  };
  source.onerror = () => {
    // A 401 closes the stream for good: refresh the token, then reopen.
    if (source.readyState === EventSource.CLOSED) {
      source = null;
      setTimeout(() => refresh().then(openStream, () => {}), 2000);
    }
  };
}

export function subscribe(fn) {
  subscribers.add(fn);
  openStream();
  return () => subscribers.delete(fn);
}

session.onChange(() => {
  if (!session.token && source) { source.close(); source = null; sourceToken = null; }
  else if (session.token && subscribers.size) openStream();
});

// RPC as ThingsBoard's control widgets send it (widget-subscription.ts):
// POST /api/rpc/{oneway|twoway}/{deviceId} with {method, params, persistent,
// retries, additionalInfo, requestUUID, timeout}; undefined fields dropped,
// timeout only when > 0.
export async function sendRpc(deviceId, { oneway, method, params, persistent = false, timeout,
                                          retries, additionalInfo, requestUUID }) {
  const body = { method, params, persistent };
  if (retries !== undefined) body.retries = retries;
  if (additionalInfo !== undefined) body.additionalInfo = additionalInfo;
  if (requestUUID !== undefined) body.requestUUID = requestUUID;
  if (timeout > 0) body.timeout = timeout;
  return request("POST", `api/rpc/${oneway ? "oneway" : "twoway"}/${deviceId}`, body);
}

// A persistent call, then GET /api/rpc/persistent/{rpcId} polled as the
// widgets do (at least every second) until it is no longer in progress.
export async function sendPersistent(deviceId, call, { interval = 1000, onStatus } = {}) {
  const { rpcId } = await sendRpc(deviceId, { ...call, persistent: true });
  for (;;) {
    const rpc = await request("GET", `api/rpc/persistent/${rpcId}`);
    if (onStatus) onStatus(rpc);
    const s = rpc.status;
    const done = call.oneway ? s !== "QUEUED" && s !== "SENT" : s !== "QUEUED" && s !== "SENT" && s !== "DELIVERED";
    if (done) return rpc;
    await new Promise((r) => setTimeout(r, Math.max(1000, interval)));
  }
}
