// The job detail page: every field, payload/headers/output shown readably, live.

import { api } from "./api.js";
import { actionButtons, actionSignature } from "./actions.js";
import { createTimeline } from "./attempts.js";
import { h, setAttr, setText } from "./dom.js";
import {
  attemptText,
  formatDuration,
  formatRelative,
  formatTime,
  jobDuration,
  prettyText,
  prettyValue,
} from "./format.js";
import { statusBadge, updateBadge } from "./jobs.js";

// Shown in this order in the field list; payload, headers and output get blocks.
const FIELDS = [
  ["id", "ID"],
  ["name", "Name"],
  ["comment", "Comment"],
  ["url", "URL"],
  ["status", "Status"],
  ["attempts", "Attempts"],
  ["retries", "Retries"],
  ["runAt", "Due"],
  ["statusCode", "Status code"],
  ["err", "Error"],
  ["createdAt", "Created"],
  ["startedAt", "Started"],
  ["finishedAt", "Finished"],
  ["duration", "Duration"],
  ["timeout", "Timeout"],
  ["waiting", "Waiting"],
  ["running", "Running"],
  ["success", "Success"],
  ["failure", "Failure"],
  ["canceled", "Canceled"],
  ["outputTruncated", "Output truncated"],
  ["idempotencyKey", "Idempotency key"],
  ["flowKey", "Flow key"],
  ["callbackUrl", "Callback URL"],
  ["failureCallbackUrl", "Failure callback URL"],
  ["callbackJobId", "Callback job"],
];
// Shown only when the job has them (the callbacks are optional; older servers have no flow key).
const OPTIONAL = new Set(["flowKey", "callbackUrl", "failureCallbackUrl", "callbackJobId"]);
const BLOCKS = ["payload", "headers", "output"];
const TIMES = new Set(["createdAt", "startedAt", "finishedAt", "runAt"]);

function fieldText(job, key, now) {
  const value = job[key];
  if (key === "duration") return formatDuration(jobDuration(job, now)) || "–";
  if (key === "attempts") return typeof value === "number" ? attemptText(job) : "–";
  if (key === "retries" && typeof value === "number") return `${value} (${value + 1} attempt${value ? "s" : ""} at most)`;
  if (key === "runAt") return value ? `${formatTime(value)} (${formatRelative(value, now)})` : "–";
  if (TIMES.has(key)) return value ? formatTime(value) : "–";
  if (key === "timeout") return value ? `${value} s` : "none";
  if (typeof value === "boolean") return value ? "yes" : "no";
  if (value === null || value === undefined || value === "") return "–";
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

/** The detail view of the job `id`. ctx comes from app.js. */
export function detailView(ctx, id) {
  document.title = `Job ${id} | HQ`;
  const badge = statusBadge();
  const actions = h("div", { class: "detail-actions" });
  let signature = null;
  const heading = h("div", { class: "detail-head" }, h("h1", {}, "Job ", h("span", { class: "mono", text: id })), badge, actions);
  const notFound = h("div", { class: "alert alert-error", role: "alert", hidden: true });

  const values = {};
  const wrappers = {};
  const list = h("dl", { class: "fields" });
  function addField(key, label) {
    values[key] = h("dd", { dataset: { field: key } });
    wrappers[key] = h("div", { class: "field" }, h("dt", { text: label }), values[key]);
    list.append(wrappers[key]);
  }
  // Fields shown as in-app links: the Flow page of the job's key, the callback job's page.
  const links = {
    flowKey: (key) => ctx.link(`/flow?key=${encodeURIComponent(key)}`),
    callbackJobId: (jobId) => ctx.link(`/jobs/${encodeURIComponent(jobId)}`),
  };
  function setLink(dd, href, text) {
    const anchor = dd.firstElementChild;
    if (anchor && anchor.getAttribute("href") === href && anchor.textContent === text) return;
    dd.replaceChildren(h("a", { href, "data-link": "", class: "field-link mono", text }));
  }
  for (const [key, label] of FIELDS) addField(key, label);

  const blocks = {};
  const blockNotes = {};
  const blockSection = h("div", { class: "blocks" });
  for (const key of BLOCKS) {
    blocks[key] = h("pre", { class: "code", dataset: { block: key }, tabindex: "0" });
    blockNotes[key] = h("span", { class: "muted block-note" });
    blockSection.append(
      h("section", { class: "panel block" }, h("h2", {}, key[0].toUpperCase() + key.slice(1), " ", blockNotes[key]), blocks[key]),
    );
  }
  const timeline = createTimeline();
  const raw = h("pre", { class: "code", dataset: { block: "raw" } });
  const rawPanel = h("details", { class: "panel raw" }, h("summary", { text: "Raw JSON" }), raw);
  const body = h("div", { class: "detail-body", hidden: true }, h("section", { class: "panel" }, list), timeline.root, blockSection, rawPanel);

  const root = h(
    "div",
    { class: "detail" },
    h("nav", { class: "breadcrumb", "aria-label": "Breadcrumb" }, h("a", { href: ctx.link("/"), "data-link": "", text: "Dashboard" }), " › ", `Job ${id}`),
    heading,
    notFound,
    body,
  );

  const hooks = {
    onDone: (kind) => {
      if (kind === "delete") ctx.navigate("/");
      else refresh();
    },
    jobLink: (newId) => ({ href: ctx.link(`/jobs/${encodeURIComponent(newId)}`), text: "Open" }),
  };

  function show(job) {
    const now = Date.now();
    notFound.hidden = true;
    body.hidden = false;
    updateBadge(badge, job.status);
    badge.hidden = false;
    actions.hidden = false;
    const sig = actionSignature(job);
    if (sig !== signature) {
      actions.replaceChildren(actionButtons(job, hooks, { labels: "long" }));
      signature = sig;
    }
    for (const [key] of FIELDS) {
      const value = job[key];
      const present = value !== null && value !== undefined && value !== "";
      if (OPTIONAL.has(key)) wrappers[key].hidden = !present;
      if (links[key] && present) setLink(values[key], links[key](String(value)), String(value));
      else setText(values[key], fieldText(job, key, now));
      if (TIMES.has(key)) setAttr(values[key], "title", job[key] || null);
    }
    // Fields a newer server may add are shown too.
    for (const key of Object.keys(job)) {
      if (!(key in values) && !BLOCKS.includes(key)) addField(key, key);
      if (!BLOCKS.includes(key) && !FIELDS.some(([k]) => k === key)) setText(values[key], fieldText(job, key, now));
    }
    setText(blocks.payload, job.payload === null ? "(no payload)" : prettyValue(job.payload));
    setText(blocks.headers, job.headers === null || Object.keys(job.headers || {}).length === 0 ? "(no headers)" : prettyValue(job.headers));
    const output = prettyText(job.output);
    setText(blocks.output, job.output ? output : "(no output)");
    const notes = [];
    if (job.output && output !== job.output) notes.push("JSON, formatted");
    if (job.outputTruncated) notes.push("truncated");
    setText(blockNotes.output, notes.length ? `(${notes.join(", ")})` : "");
    setText(raw, JSON.stringify(job, null, 2));
  }

  let alive = true;
  // The attempt history is fetched again only when the job moved on (or it lagged behind).
  let attempts = null;
  let attemptsFor = null;

  function attemptsSignature(job) {
    return [job.attempts, job.status, job.startedAt, job.finishedAt, job.runAt].join("|");
  }

  function attemptsStale(job) {
    if (attempts === null || attemptsFor !== attemptsSignature(job)) return true;
    // An attempt under way is not in the history yet; every earlier one should be.
    const finished = job.status === "running" || job.status === "canceling" ? job.attempts - 1 : job.attempts;
    return typeof job.attempts === "number" && attempts.length < finished;
  }

  async function refreshAttempts(job) {
    if (!attemptsStale(job)) return;
    try {
      const data = await api.attempts(id);
      attempts = Array.isArray(data.attempts) ? data.attempts : [];
      attemptsFor = attemptsSignature(job);
    } catch (e) {
      if (!alive) return;
      if (e.status === 404 && typeof job.attempts !== "number") {
        timeline.showMessage("This server keeps no attempt history.");
      } else if (e.status > 0) {
        timeline.showMessage(`No attempt history: ${e.message}`);
      }
      attempts = null;
    }
  }

  async function refresh() {
    let job;
    try {
      job = await api.getJob(id);
    } catch (e) {
      if (alive) showError(e);
      return;
    }
    if (!alive) return;
    show(job);
    ctx.connectionState(null);
    await refreshAttempts(job);
    if (alive && attempts !== null) timeline.update(job, attempts, Date.now());
  }

  function showError(e) {
    if (e.status > 0 && e.status < 500) {
      // 404 (deleted, or never existed) or 400: say so in the page.
      setText(notFound, e.message);
      notFound.hidden = false;
      body.hidden = true;
      actions.hidden = true;
      badge.hidden = true;
      ctx.connectionState(null);
    } else {
      ctx.connectionState(e);
    }
  }

  const poller = ctx.every(refresh);
  return {
    root,
    destroy: () => {
      alive = false;
      poller.stop();
    },
  };
}
