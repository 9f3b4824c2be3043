// The REST API, called with fetch from the same origin. The key lives in sessionStorage for
// this browser tab's session only, and leaves it only in the Authorization header.

const KEY = "cronbus.key";

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }

  /** The problem's `errors`: [{field, reason}] (empty when it names no field). */
  get fields() {
    return Array.isArray(this.problem.errors) ? this.problem.errors : [];
  }
}

export const session = {
  key: () => sessionStorage.getItem(KEY),
  signIn: (key) => sessionStorage.setItem(KEY, key),
  signOut: () => sessionStorage.removeItem(KEY),
};

// Set by app.js: what to do when the key stops working (revoked mid-session).
export const hooks = { unauthenticated: () => {} };

/** Calls the API; answers the parsed JSON (null for 204), or the Response with `raw`.
 * Throws ApiError with the problem details for any 4xx/5xx. */
export async function api(method, path, { body, headers = {}, signal, raw = false, key } = {}) {
  const sent = { Accept: "application/json", ...headers };
  const token = key ?? session.key();
  if (token) sent.Authorization = `Bearer ${token}`;
  if (body !== undefined) sent["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers: sent,
    body: body === undefined ? undefined : JSON.stringify(body),
    signal,
    credentials: "omit",
    cache: "no-store",
  });
  if (!response.ok) {
    let problem = { title: response.statusText, status: response.status };
    try {
      problem = await response.json();
    } catch {
      // not a problem document (a proxy's error page): keep the status line
    }
    const error = new ApiError(response.status, problem);
    if (response.status === 401 && key === undefined) hooks.unauthenticated(error);
    throw error;
  }
  if (raw) return response;
  if (response.status === 204) return null;
  return response.json();
}

/** `path` with the query parameters that have a value. */
export function withQuery(path, params) {
  const q = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value === null || value === undefined || value === "") continue;
    for (const v of Array.isArray(value) ? value : [value]) q.append(name, v);
  }
  const text = q.toString();
  return text ? `${path}?${text}` : path;
}

let described = null;
/** Which optional endpoints this server has, from its public OpenAPI document (so the console
 * can leave out what an older server lacks without calling it and logging a 404). */
export async function features() {
  if (!described) {
    described = fetch("/v1/openapi.json", { credentials: "omit" })
      .then((r) => (r.ok ? r.json() : { paths: {} }))
      .then((doc) => {
        const paths = doc.paths || {};
        return {
          keys: "/v1/keys" in paths,
          audit: "/v1/audit" in paths,
          slots: "/v1/jobs/{job_id}/slots" in paths,
          backfill: "/v1/jobs/{job_id}/backfill" in paths,
          preview: "/v1/schedule/preview" in paths,
          filters: JSON.stringify((paths["/v1/jobs"] || {}).get || {}).includes('"state"'),
        };
      })
      .catch(() => ({}));
  }
  return described;
}
