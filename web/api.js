// The REST client of the web page: one place for the API address, the token and error bodies.
const SETTINGS_KEY = "aip.settings";

export function settings() {
  const saved = JSON.parse(localStorage.getItem(SETTINGS_KEY) || "{}");
  return { apiBase: saved.apiBase || "", token: saved.token || "" };
}

export function saveSettings(apiBase, token) {
  localStorage.setItem(SETTINGS_KEY, JSON.stringify({ apiBase: apiBase.replace(/\/+$/, ""), token }));
}

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export async function api(path, options = {}) {
  const { apiBase, token } = settings();
  const headers = { ...(options.headers || {}) };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (options.json !== undefined) {
    headers["Content-Type"] = "application/json";
    options = { ...options, body: JSON.stringify(options.json) };
  }
  let response;
  try {
    response = await fetch(apiBase + path, { ...options, headers });
  } catch (err) {
    throw new ApiError(0, "NETWORK", `cannot reach the gateway at ${apiBase || location.origin} (${err.message})`);
  }
  const type = response.headers.get("content-type") || "";
  const body = type.includes("application/json") ? await response.json() : await response.text();
  if (!response.ok) {
    const error = (body && body.error) || { code: `HTTP_${response.status}`, message: String(body) };
    throw new ApiError(response.status, error.code, error.message);
  }
  return body;
}

export function explain(err) {
  if (err.code === "SERVICE_UNAVAILABLE") return `${err.message} — start it (aip up) and this page recovers by itself.`;
  if (err.code === "NETWORK") return `${err.message} — is the platform running? Check the API address in settings.`;
  if (err.code === "UNAUTHORIZED") return "The gateway needs a token: set it in settings.";
  return err.message;
}

// Follow a server-sent-events stream with fetch (so the token travels in a header, not the URL).
export async function follow(path, onData, signal) {
  const { apiBase, token } = settings();
  const response = await fetch(apiBase + path, { headers: token ? { Authorization: `Bearer ${token}` } : {}, signal });
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    const error = body.error || { code: `HTTP_${response.status}`, message: response.statusText };
    throw new ApiError(response.status, error.code, error.message);
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const event = (block.match(/^event: (.*)$/m) || [null, "message"])[1];
      const data = block.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
      onData(event, data);
    }
  }
}

// Who the gateway takes this page for ({subject, role, open}); asked once per page load.
const RANK = { viewer: 1, editor: 2, admin: 3 };
let identity = null;

export async function whoami() {
  if (!identity) identity = api("/api/v1/whoami").catch(() => ({ subject: "", role: "", open: false }));
  return identity;
}

// Whether the signed-in person's role may do what needs `role` (the role table of the platform).
export function can(who, role) {
  return who.open || (RANK[who.role] || 0) >= RANK[role];
}

// "alice · editor" in the header's #who, so a person sees who the page acts as.
export async function showIdentity() {
  const who = await whoami();
  const element = document.getElementById("who");
  if (!element) return who;
  element.textContent = who.open ? "open platform (no sign-in)" : who.subject ? `signed in as ${who.subject} · ${who.role}` : "not signed in";
  element.dataset.testid = "who";
  return who;
}
