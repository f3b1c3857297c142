// The attempt history of a job as a timeline (GET /job/{id}/attempts): each attempt
// with its start, duration, status code or error, and output; then the attempt
// running now, or the next one a retry waits for.

import { h, replaceChildren, setAttr, setText } from "./dom.js";
import { formatBytes, formatDuration, formatRelative, formatShortTime, formatTime, prettyText } from "./format.js";

/** Outputs longer than this (characters or lines) start collapsed. */
export const LONG_OUTPUT_CHARS = 300;
export const LONG_OUTPUT_LINES = 6;

/** Whether an attempt succeeded: a 2xx answer and no error. */
const succeeded = (attempt) => !attempt.err && attempt.statusCode >= 200 && attempt.statusCode < 300;

function timeElement(iso, now, prefix = "") {
  return h("time", {
    datetime: iso || null,
    title: iso ? `${formatTime(iso)} (${iso})` : null,
    text: iso ? prefix + formatShortTime(iso, now) : "",
  });
}

function outputElement(output) {
  if (!output) return h("p", { class: "attempt-output-none muted", text: "(no output)" });
  const text = prettyText(output);
  const json = text !== output;
  const pre = h("pre", { class: "code attempt-output", tabindex: "0", text });
  const long = text.length > LONG_OUTPUT_CHARS || text.split("\n").length > LONG_OUTPUT_LINES;
  if (!long) return json ? h("div", {}, h("span", { class: "muted attempt-output-note", text: "JSON, formatted" }), pre) : pre;
  const size = formatBytes(new TextEncoder().encode(output).length);
  return h(
    "details",
    { class: "attempt-output-long" },
    h("summary", { text: `Output (${size}${json ? ", JSON, formatted" : ""})` }),
    pre,
  );
}

function attemptItem(attempt, now) {
  const ok = succeeded(attempt);
  const result = attempt.statusCode !== null && attempt.statusCode !== undefined ? `HTTP ${attempt.statusCode}` : "no answer";
  const took =
    attempt.startedAt && attempt.finishedAt ? formatDuration(Date.parse(attempt.finishedAt) - Date.parse(attempt.startedAt)) : "";
  return h(
    "li",
    { class: `attempt attempt-${ok ? "success" : "failure"}`, dataset: { attempt: String(attempt.attempt) } },
    h(
      "div",
      { class: "attempt-head" },
      h("span", { class: "attempt-number", text: `Attempt ${attempt.attempt}` }),
      h("span", { class: `badge attempt-result status status-${ok ? "success" : "failure"}`, text: result }),
      attempt.startedAt ? timeElement(attempt.startedAt, now, "started ") : null,
      took ? h("span", { class: "attempt-duration muted", text: `took ${took}` }) : null,
    ),
    attempt.err ? h("p", { class: "attempt-err", text: attempt.err }) : null,
    outputElement(attempt.output),
  );
}

/**
 * Create the timeline panel. Returns {root, update(job, attempts, now), showMessage(text)}:
 * `attempts` is the list from the API, oldest first.
 */
export function createTimeline() {
  const count = h("span", { class: "muted block-note" });
  const message = h("p", { class: "muted timeline-message", hidden: true });
  const list = h("ol", { class: "timeline", "aria-label": "Attempt history" });
  const tail = h("li", { class: "attempt attempt-pending", hidden: true });
  const root = h("section", { class: "panel attempts" }, h("h2", {}, "Attempts ", count), message, list);
  // Finished attempts do not change: their items are kept (an opened output stays open).
  const items = new Map();

  function update(job, attempts, now) {
    message.hidden = true;
    list.hidden = false;
    const keys = new Set();
    attempts.forEach((attempt, index) => {
      const key = `${attempt.attempt}|${attempt.startedAt}|${attempt.finishedAt}`;
      keys.add(key);
      let item = items.get(key);
      if (!item) {
        item = attemptItem(attempt, now);
        items.set(key, item);
      }
      if (list.children[index] !== item) list.insertBefore(item, list.children[index] || null);
    });
    for (const [key, item] of items) {
      if (!keys.has(key)) {
        item.remove();
        items.delete(key);
      }
    }
    updateTail(job, attempts, now);
    list.append(tail);
    const most = (job.retries || 0) + 1;
    setText(count, `(${attempts.length} recorded, up to ${most})`);
    if (!attempts.length && tail.hidden) {
      message.hidden = false;
      setText(message, "No attempt yet.");
    }
  }

  // The attempt under way, or the next one a scheduled job waits for.
  function updateTail(job, attempts, now) {
    const last = attempts.length ? attempts[attempts.length - 1].attempt : 0;
    if (job.status === "running" || job.status === "canceling") {
      const number = Math.max(job.attempts || 0, last + 1);
      const since = job.startedAt ? now - Date.parse(job.startedAt) : null;
      replaceChildren(
        tail,
        h(
          "div",
          { class: "attempt-head" },
          h("span", { class: "attempt-number", text: `Attempt ${number}` }),
          h("span", { class: "badge status status-running is-running", text: job.status }),
          job.startedAt ? timeElement(job.startedAt, now, "started ") : null,
          since !== null ? h("span", { class: "attempt-duration muted", text: `for ${formatDuration(since)}` }) : null,
        ),
      );
      setAttr(tail, "class", "attempt attempt-pending attempt-running");
      tail.hidden = false;
    } else if (job.status === "scheduled" && job.runAt) {
      replaceChildren(
        tail,
        h(
          "div",
          { class: "attempt-head" },
          h("span", { class: "attempt-number", text: `Attempt ${last + 1}` }),
          h("span", { class: "badge status status-scheduled", text: "scheduled" }),
          h("span", { class: "attempt-due" }, "due ", timeElement(job.runAt, now), ` (${formatRelative(job.runAt, now)})`),
        ),
      );
      setAttr(tail, "class", "attempt attempt-pending attempt-scheduled");
      tail.hidden = false;
    } else {
      replaceChildren(tail);
      setAttr(tail, "class", "attempt attempt-pending");
      tail.hidden = true;
    }
  }

  function showMessage(text) {
    setText(message, text);
    message.hidden = false;
    list.hidden = true;
    setText(count, "");
  }

  return { root, update, showMessage };
}
