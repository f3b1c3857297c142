// The HQ HTTP API, called directly from the page (same origin, API at the root).

import { authHeaders, tokenRequired } from "./auth.js";

const TIMEOUT_MS = 10000;

/** An API call that failed; `status` is the HTTP status, or 0 when no answer came. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.name = "ApiError";
    this.status = status;
  }
}

function queryString(params) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params || {})) {
    if (value !== null && value !== undefined && value !== "") query.set(key, String(value));
  }
  const text = query.toString();
  return text ? "?" + text : "";
}

async function call(method, path, { query, body } = {}) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), TIMEOUT_MS);
  const init = { method, headers: { Accept: "application/json", ...authHeaders() }, signal: controller.signal };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path + queryString(query), init);
  } catch (e) {
    clearTimeout(timer);
    if (e.name === "AbortError") {
      throw new ApiError(0, `The HQ server did not answer within ${TIMEOUT_MS / 1000} s`);
    }
    throw new ApiError(0, "Cannot reach the HQ server");
  }
  let data = null;
  try {
    data = await response.json();
  } catch (e) {
    data = null;
  } finally {
    clearTimeout(timer);
  }
  if (!response.ok) {
    const message =
      data && typeof data.error === "string" && data.error
        ? data.error
        : `${response.status} ${response.statusText || "error"}`.trim();
    if (response.status === 401) tokenRequired(message);
    throw new ApiError(response.status, message);
  }
  if (data === null) throw new ApiError(response.status, "The server sent an unreadable answer");
  return data;
}

const jobPath = (id) => "/job/" + encodeURIComponent(id);
const schedulePath = (id) => "/schedule/" + encodeURIComponent(id);
// A flow key is one path segment: ':' '/' '[' ']' are escaped. The keys "." and ".."
// cannot be sent: browsers resolve them (even as %2E) as dot segments of the path.
function flowPath(key) {
  if (key === "." || key === "..") throw new ApiError(0, `The flow key “${key}” cannot be used in a URL`);
  return "/flow/" + encodeURIComponent(key);
}

export const api = {
  stats: () => call("GET", "/stats"),
  history: () => call("GET", "/stats/history"),
  /** params: term, status, begin, limit, reverse. */
  listJobs: (params) => call("GET", "/job", { query: params }),
  getJob: (id) => call("GET", jobPath(id)),
  stopJob: (id) => call("POST", jobPath(id) + "/stop"),
  restartJob: (id, copy) => call("POST", jobPath(id) + "/restart", { body: { copy: !!copy } }),
  deleteJob: (id) => call("DELETE", jobPath(id)),
  /** {attempts: [{attempt, startedAt, finishedAt, statusCode, err, output}]}, oldest first. */
  attempts: (id) => call("GET", jobPath(id) + "/attempts"),
  /**
   * A bulk action on every job matching filter {name, term, status}:
   * kind "restart" | "stop" | "delete". Resolves to {count}.
   */
  bulk: (kind, filter) => call("POST", "/jobs/" + kind, { query: filter }),
  /** {schedules: [{id, name, cron, timezone, job, paused, nextRunAt, lastRunAt, lastJobId}]}. */
  listSchedules: () => call("GET", "/schedule"),
  /** body: {name, cron, timezone, job: {url, ...}, paused}. Resolves to the schedule. */
  addSchedule: (body) => call("POST", "/schedule", { body }),
  deleteSchedule: (id) => call("DELETE", schedulePath(id)),
  pauseSchedule: (id) => call("POST", schedulePath(id) + "/pause"),
  resumeSchedule: (id) => call("POST", schedulePath(id) + "/resume"),
  /**
   * {flows: [{key, parallelism, rate, period, paused, configured, running, waiting, limit,
   * limitHistory: [{at, limit}]}]}, sorted by key.
   */
  listFlows: () => call("GET", "/flow"),
  getFlow: (key) => call("GET", flowPath(key)),
  /** body: {parallelism, rate, period, paused}, each optional. Resolves to the flow. */
  setFlow: (key, body) => call("PUT", flowPath(key), { body }),
  removeFlow: (key) => call("DELETE", flowPath(key)),
  pauseFlow: (key) => call("POST", flowPath(key) + "/pause"),
  resumeFlow: (key) => call("POST", flowPath(key) + "/resume"),
};
