// Formatting and the rules for which action a job allows.

export const STATUSES = [
  "waiting",
  "running",
  "canceling",
  "success",
  "failure",
  "canceled",
  "unfinished",
  "unknown",
];

const ACTIVE = new Set(["waiting", "running", "canceling"]);

/** Stop is offered only for a waiting or running job (a canceling one is already stopping). */
export const canStop = (job) => job.status === "waiting" || job.status === "running";
/** Restart is offered only for a job that is not active. */
export const canRestart = (job) => !ACTIVE.has(job.status);
/** Delete is offered only for a job that is not active. */
export const canDelete = (job) => !ACTIVE.has(job.status);

/** The CSS class colouring a status. */
export function statusClass(status) {
  const known = ["success", "failure", "running"];
  return "status status-" + (known.includes(status) ? status : "other");
}

const pad = (n, width = 2) => String(n).padStart(width, "0");

/** An RFC 3339 time as local "YYYY-MM-DD HH:mm:ss", or "" for null. */
export function formatTime(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return `${formatDate(d)} ${formatClock(d)}`;
}

const formatDate = (d) => `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
const formatClock = (d) => `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;

/** Like formatTime, but only "HH:mm:ss" for a time on the same local day as `now`. */
export function formatShortTime(iso, now) {
  if (!iso) return "";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return formatDate(d) === formatDate(new Date(now)) ? formatClock(d) : formatTime(iso);
}

/** A duration in milliseconds, short and readable: 850 ms, 12.3 s, 4 m 05 s, 2 h 03 m. */
export function formatDuration(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return "";
  const value = Math.max(0, ms);
  if (value < 1000) return `${Math.round(value)} ms`;
  if (value < 60000) return `${(value / 1000).toFixed(1)} s`;
  const seconds = Math.floor(value / 1000);
  if (seconds < 3600) return `${Math.floor(seconds / 60)} m ${pad(seconds % 60)} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 1440) return `${Math.floor(minutes / 60)} h ${pad(minutes % 60)} m`;
  return `${Math.floor(minutes / 1440)} d ${pad(Math.floor(minutes / 60) % 24)} h`;
}

/** How long the job ran (or has been running, measured against `now`), in ms; null if not started. */
export function jobDuration(job, now) {
  if (!job.startedAt) return null;
  const start = Date.parse(job.startedAt);
  if (job.finishedAt) return Date.parse(job.finishedAt) - start;
  if (job.running) return now - start;
  return null;
}

/** JSON value as indented text ("" for null). */
export function prettyValue(value) {
  if (value === null || value === undefined) return "";
  return JSON.stringify(value, null, 2);
}

/** Text shown as indented JSON when it is a JSON object or array, else as it is. */
export function prettyText(text) {
  if (!text) return "";
  const trimmed = text.trim();
  if (trimmed.startsWith("{") || trimmed.startsWith("[")) {
    try {
      return JSON.stringify(JSON.parse(trimmed), null, 2);
    } catch (e) {
      return text;
    }
  }
  return text;
}

/** Integer percentage of part in whole, floored; 0 when whole is 0. */
export function percent(part, whole) {
  return whole > 0 ? Math.floor((part / whole) * 100) : 0;
}
