// Bulk actions on a filtered job list: "Stop / Restart / Delete all N matching".
// N is counted in the page (the API has no count): by the list page itself when it
// holds every match, else by paging through GET /job with the filter, 1,000 jobs a
// request, up to COUNT_LIMIT jobs; beyond that the counts read "10,000+".

import { confirmDialog } from "./actions.js";
import { api } from "./api.js";
import { h, setAttr, setText } from "./dom.js";
import { FINISHED_STATUSES, STOPPABLE_STATUSES, formatCount } from "./format.js";
import { notify } from "./notify.js";

/** Jobs fetched per request while counting. */
export const COUNT_PAGE = 1000;
/** Counting stops after this many matching jobs. */
export const COUNT_LIMIT = 10000;
/** How often the counts are taken again while a filter is set (when the list page cannot tell). */
const RECOUNT_MS = 10000;

// Which matching jobs each action applies to (what the server does with them).
const ACTIONS = [
  { kind: "stop", label: "Stop", statuses: STOPPABLE_STATUSES, which: "active", done: "Stopped", style: "danger" },
  { kind: "restart", label: "Restart", statuses: FINISHED_STATUSES, which: "finished", done: "Restarted", style: "secondary" },
  { kind: "delete", label: "Delete", statuses: FINISHED_STATUSES, which: "finished", done: "Deleted", style: "danger" },
];

const plural = (n, word) => `${word}${n === 1 ? "" : "s"}`;

/** Count the jobs in `jobs` by what the bulk actions would do with them. */
function tally(counts, jobs) {
  for (const job of jobs) {
    counts.total += 1;
    for (const action of ACTIONS) if (action.statuses.includes(job.status)) counts[action.kind] += 1;
  }
  return counts;
}

const emptyCounts = () => ({ total: 0, stop: 0, restart: 0, delete: 0, more: false });

/**
 * Count the jobs matching `filter` ({term, status}), newest first, at most `limit`.
 * Resolves to {total, stop, restart, delete, more}: `more` when the count stopped at
 * the limit with more jobs left. Fails with the ApiError of a failed page.
 */
export async function countMatching(filter, { limit = COUNT_LIMIT, pageSize = COUNT_PAGE } = {}) {
  const counts = emptyCounts();
  let begin = "";
  while (counts.total < limit) {
    const size = Math.min(pageSize, limit - counts.total);
    const data = await api.listJobs({ ...filter, begin, limit: size, reverse: true });
    tally(counts, data.jobs);
    if (!data.hasNext || !data.next) return counts;
    begin = data.next;
  }
  counts.more = true;
  return counts;
}

/** The filter in words: `status “failure” and search “report”`. */
export function filterText(filter) {
  const parts = [];
  if (filter.status) parts.push(`status “${filter.status}”`);
  if (filter.term) parts.push(`search “${filter.term}”`);
  return parts.join(" and ");
}

/**
 * Create the bulk bar of the job list. ctx: {every}; onDone() runs after an action.
 * Returns {root, setFilter({term, status}), fromPage(data, begin), destroy()}.
 */
export function createBulkBar(ctx, onDone) {
  const info = h("span", { class: "bulk-info muted" });
  const buttons = {};
  for (const action of ACTIONS) {
    buttons[action.kind] = h("button", {
      type: "button",
      class: `button button-small button-${action.style}`,
      dataset: { bulk: action.kind },
      hidden: true,
      onclick: () => run(action),
    });
  }
  const root = h(
    "div",
    { class: "bulk", role: "group", "aria-label": "Actions on every matching job", hidden: true },
    info,
    h("span", { class: "actions" }, ACTIONS.map((a) => buttons[a.kind])),
  );

  let filter = { term: "", status: "" };
  let key = "";
  let counts = null;
  let countError = null;
  let counting = null;
  let busy = false;

  const filtered = () => !!(filter.term || filter.status);
  const allowed = (action) => !filter.status || action.statuses.includes(filter.status);

  function show() {
    root.hidden = !filtered();
    if (!filtered()) return;
    if (counts === null) {
      setText(info, countError ? `Cannot count the matching jobs: ${countError.message}` : "Counting the matching jobs…");
    } else {
      const total = formatCount(counts.total, counts.more);
      const active = counts.total - counts.restart;
      const detail = counts.total && !filter.status ? ` (${formatCount(active, counts.more && active > 0)} active)` : "";
      setText(info, counts.total ? `${total} matching ${plural(counts.total, "job")}${detail}` : "No matching jobs");
    }
    for (const action of ACTIONS) {
      const button = buttons[action.kind];
      const n = counts ? counts[action.kind] : 0;
      button.hidden = !allowed(action) || n === 0;
      const text = `${action.label} all ${formatCount(n, counts !== null && counts.more)} matching`;
      setText(button, text);
      setAttr(button, "title", `${action.label} every ${action.which} job matching ${filterText(filter)}`);
      button.disabled = busy;
    }
  }

  async function recount() {
    if (!filtered()) return null;
    const mine = key;
    let result;
    try {
      result = await countMatching(filter);
    } catch (e) {
      if (mine === key && counts === null) {
        countError = e;
        show();
      }
      throw e;
    }
    if (mine !== key) return null;
    counts = result;
    countError = null;
    show();
    return result;
  }

  // The periodic count; errors leave the last counts (the list shows the error).
  async function tick() {
    if (!filtered() || counting) return;
    counting = recount().catch(() => null);
    try {
      await counting;
    } finally {
      counting = null;
    }
  }
  const poller = ctx.every(tick, RECOUNT_MS);

  function setFilter(next) {
    const nextKey = JSON.stringify([next.term || "", next.status || ""]);
    if (nextKey === key) return;
    key = nextKey;
    filter = { term: next.term || "", status: next.status || "" };
    counts = null;
    countError = null;
    show();
    if (filtered()) recount().catch(() => null);
  }

  /** A first list page that holds every match gives the counts without asking again. */
  function fromPage(data, begin) {
    if (!filtered() || begin || data.hasNext) return;
    counts = tally(emptyCounts(), data.jobs);
    countError = null;
    show();
  }

  async function run(action) {
    let fresh;
    busy = true;
    show();
    try {
      fresh = await recount();
    } catch (e) {
      notify("error", `Could not count the matching jobs: ${e.message}${e.status ? ` (${e.status})` : ""}`);
      return;
    } finally {
      busy = false;
      show();
    }
    if (!fresh) return;
    const n = fresh[action.kind];
    const words = filterText(filter);
    const amount = formatCount(n, fresh.more);
    if (n === 0) {
      notify("error", `No ${action.which} jobs match ${words} any more.`);
      return;
    }
    const others = fresh.total - n;
    const noun = `${amount} ${action.which} ${plural(n, "job")}`;
    const consequence = {
      stop: "Waiting and scheduled jobs are canceled without being sent; running requests are aborted.",
      restart: "Each runs again in place (same id), its outcome and attempt history cleared.",
      delete: "This cannot be undone.",
    }[action.kind];
    const message = [
      `${action.label} all `,
      h("strong", { class: "bulk-count", text: noun }),
      ` matching ${words}? ${consequence}`,
      others > 0 ? ` The other ${formatCount(others, fresh.more)} matching ${plural(others, "job")} ${others === 1 ? "is" : "are"} left as ${others === 1 ? "it is" : "they are"}.` : "",
      fresh.more ? ` More than ${formatCount(COUNT_LIMIT)} jobs match: the server acts on every one of them.` : "",
    ];
    const ok = await confirmDialog(`${action.label} ${noun}`, message, [
      { label: `${action.label} all`, value: action.kind, kind: action.style === "danger" ? "danger" : "primary" },
    ]);
    if (!ok) return;
    const sent = { ...filter };
    try {
      const result = await api.bulk(action.kind, sent);
      const count = typeof result.count === "number" ? result.count : 0;
      notify("success", `${action.done} ${formatCount(count)} ${plural(count, "job")} matching ${filterText(sent)}.`);
    } catch (e) {
      notify("error", `Could not ${action.kind} the matching jobs: ${e.message}${e.status ? ` (${e.status})` : ""}`);
    }
    counts = null;
    show();
    recount().catch(() => null);
    onDone();
  }

  show();
  return {
    root,
    setFilter,
    fromPage,
    destroy: () => poller.stop(),
  };
}
