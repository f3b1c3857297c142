// Formatting and the rules for which action a job allows.

export const STATUSES = [
  "waiting",
  "scheduled",
  "running",
  "canceling",
  "success",
  "failure",
  "canceled",
  "unfinished",
  "unknown",
];

/** Statuses of jobs that are not finished: Stop applies to them, Restart and Delete do not. */
export const ACTIVE_STATUSES = ["waiting", "scheduled", "running", "canceling"];
/** Statuses Stop applies to (a canceling job is already stopping). */
export const STOPPABLE_STATUSES = ["waiting", "scheduled", "running"];
/** Statuses of finished jobs: Restart and Delete apply to them. */
export const FINISHED_STATUSES = STATUSES.filter((s) => !ACTIVE_STATUSES.includes(s));

const ACTIVE = new Set(ACTIVE_STATUSES);

/** Stop is offered only for a waiting, scheduled or running job (a canceling one is already stopping). */
export const canStop = (job) => STOPPABLE_STATUSES.includes(job.status);
/** Restart is offered only for a job that is not active. */
export const canRestart = (job) => !ACTIVE.has(job.status);
/** Delete is offered only for a job that is not active. */
export const canDelete = (job) => !ACTIVE.has(job.status);

/** The CSS class colouring a status. */
export function statusClass(status) {
  const known = ["success", "failure", "running", "scheduled"];
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

/**
 * How far `iso` is from `now` (ms), short: "in 12 s", "in 4 min", "in 2 h 05 min",
 * "in 3 d 04 h"; "now" within a second; "12 s ago" and so on for a past time.
 */
export function formatRelative(iso, now) {
  if (!iso) return "";
  const at = Date.parse(iso);
  if (Number.isNaN(at)) return String(iso);
  const diff = at - now;
  const seconds = Math.round(Math.abs(diff) / 1000);
  if (seconds < 1) return "now";
  const minutes = Math.round(seconds / 60);
  let text;
  if (seconds < 60) text = `${seconds} s`;
  else if (minutes < 60) text = `${minutes} min`;
  else if (minutes < 1440) text = `${Math.floor(minutes / 60)} h ${pad(minutes % 60)} min`;
  else text = `${Math.floor(minutes / 1440)} d ${pad(Math.floor(minutes / 60) % 24)} h`;
  return diff > 0 ? `in ${text}` : `${text} ago`;
}

/** "attempt 2 of 4": attempts started so far, of the most the job may make (retries + 1). */
export function attemptText(job) {
  if (typeof job.attempts !== "number") return "";
  const most = (job.retries || 0) + 1;
  if (job.attempts === 0) return `no attempt yet (up to ${most})`;
  return `attempt ${job.attempts} of ${most}`;
}

/** A count for a label: 1,234 (and "10,000+" when `more` is true). */
export function formatCount(n, more = false) {
  return n.toLocaleString("en-US") + (more ? "+" : "");
}

/** Bytes, short: 512 B, 3.4 KiB, 1.2 MiB. */
export function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / (1024 * 1024)).toFixed(1)} MiB`;
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
