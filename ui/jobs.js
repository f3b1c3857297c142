// The job table: rows keyed by job id and updated in place, so a refresh never
// flickers, never loses the scroll position and never rebuilds a focused button.

import { actionButtons, actionSignature } from "./actions.js";
import { h, setAttr, setText } from "./dom.js";
import {
  attemptText,
  formatDuration,
  formatRelative,
  formatShortTime,
  formatTime,
  jobDuration,
  statusClass,
} from "./format.js";

const COLUMNS = [
  ["id", "ID"],
  ["name", "Name"],
  ["url", "URL"],
  ["created", "Created"],
  ["started", "Started"],
  ["finished", "Finished"],
  ["duration", "Duration"],
  ["status", "Status"],
  ["actions", "Actions"],
];

/** A due time: "in 4 min", with the local and UTC time on hover; update it with updateDue. */
export function dueLabel() {
  return h("span", { class: "due muted", hidden: true });
}

/** Show when a scheduled job is due (its runAt) in a label made by dueLabel; hide it otherwise. */
export function updateDue(label, job, now) {
  const due = job.status === "scheduled" && job.runAt ? job.runAt : null;
  label.hidden = !due;
  setText(label, due ? formatRelative(due, now) : "");
  const attempts = job.attempts > 0 ? `\nafter ${attemptText(job)}` : "";
  setAttr(label, "title", due ? `due ${formatTime(due)} (${due})${attempts}` : null);
}

/** A status badge; update it with updateBadge. */
export function statusBadge() {
  return h("span", { class: "badge" });
}

/** Show `status` in a badge made by statusBadge (colour, and a spinner while running). */
export function updateBadge(badge, status) {
  setText(badge, status);
  setAttr(badge, "class", `badge ${statusClass(status)}${status === "running" ? " is-running" : ""}`);
}

// Today's times show as HH:mm:ss; the full local time and the UTC time are in the tooltip.
function setTime(cell, iso, now) {
  setText(cell, formatShortTime(iso, now));
  setAttr(cell, "title", iso ? `${formatTime(iso)} (${iso})` : null);
}

/**
 * Create the job table. ctx.link(path) makes an in-app URL; hooks are passed to
 * the action buttons. Returns {root, update(jobs, now)}.
 */
export function createJobTable(ctx, hooks) {
  const tbody = h("tbody");
  const root = h(
    "table",
    { class: "jobs" },
    h("thead", {}, h("tr", {}, COLUMNS.map(([key, label]) => h("th", { class: `col-${key}`, scope: "col", text: label })))),
    tbody,
  );
  const rows = new Map();

  function createRow(id) {
    const cells = {};
    const tr = h("tr", { dataset: { jobId: id } });
    for (const [key, label] of COLUMNS) {
      cells[key] = h("td", { class: `col-${key}`, dataset: { label } });
      tr.append(cells[key]);
    }
    const link = h("a", { href: ctx.link(`/jobs/${encodeURIComponent(id)}`), "data-link": "", class: "job-link", text: id });
    cells.id.append(link);
    const badge = statusBadge();
    const due = dueLabel();
    cells.status.append(badge, due);
    return { tr, cells, link, badge, due, signature: null };
  }

  function updateRow(row, job, now) {
    const { cells } = row;
    setAttr(row.link, "class", `job-link ${statusClass(job.status)}`);
    setText(cells.name, job.name);
    setAttr(cells.name, "title", job.comment ? `${job.name}\n${job.comment}` : job.name);
    setText(cells.url, job.url);
    setAttr(cells.url, "title", job.url);
    setTime(cells.created, job.createdAt, now);
    setTime(cells.started, job.startedAt, now);
    setTime(cells.finished, job.finishedAt, now);
    setText(cells.duration, formatDuration(jobDuration(job, now)));
    updateBadge(row.badge, job.status);
    updateDue(row.due, job, now);
    const signature = actionSignature(job);
    if (signature !== row.signature) {
      cells.actions.replaceChildren(actionButtons(job, hooks));
      row.signature = signature;
    }
  }

  function update(jobs, now) {
    const wanted = new Set(jobs.map((job) => job.id));
    for (const [id, row] of rows) {
      if (!wanted.has(id)) {
        row.tr.remove();
        rows.delete(id);
      }
    }
    jobs.forEach((job, index) => {
      let row = rows.get(job.id);
      if (!row) {
        row = createRow(job.id);
        rows.set(job.id, row);
      }
      updateRow(row, job, now);
      // Move only rows that are out of place: new rows go in, old ones stay put.
      const current = tbody.children[index];
      if (current !== row.tr) tbody.insertBefore(row.tr, current || null);
    });
  }

  return { root, update };
}
