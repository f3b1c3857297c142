// The dashboard: stat cards, the throughput chart, and the job list with search,
// status filter and paging. The search, filter and page live in the page's URL.

import { api } from "./api.js";
import { createBulkBar } from "./bulk.js";
import { createChart } from "./chart.js";
import { h, setText } from "./dom.js";
import { STATUSES, percent } from "./format.js";
import { createJobTable } from "./jobs.js";

/** Jobs per page. */
export const PAGE_SIZE = 20;
const SEARCH_DELAY_MS = 300;

function card(label) {
  const value = h("div", { class: "card-value", text: "–" });
  const note = h("div", { class: "card-note muted" });
  const extra = h("div", { class: "card-note muted" });
  const root = h("section", { class: "card", "aria-label": label }, h("h2", { class: "card-label", text: label }), value, note, extra);
  return { root, value, note, extra };
}

function nextId(id) {
  return (BigInt(id) + 1n).toString();
}

/** The dashboard view. ctx comes from app.js. */
export function dashboardView(ctx) {
  document.title = "Dashboard | HQ";
  const params = {
    term: ctx.query.get("term") || "",
    status: ctx.query.get("status") || "",
    begin: ctx.query.get("begin") || "",
  };
  let generation = 0;
  let alive = true;
  let shownIds = [];
  let hasNext = false;
  let lastNext = null;

  // Cards.
  const running = card("Jobs running");
  const queued = card("Jobs in queue");
  const scheduled = card("Jobs scheduled");
  scheduled.root.hidden = true;
  const stored = card("Stored jobs");
  const recent = card("New jobs in the last minute");
  const cards = h("div", { class: "cards" }, running.root, queued.root, scheduled.root, stored.root, recent.root);

  const chart = createChart();

  // Filters.
  const search = h("input", {
    type: "search",
    name: "term",
    class: "input",
    placeholder: "Search id, name, comment, URL or status (regexp)",
    "aria-label": "Search jobs",
    autocomplete: "off",
    spellcheck: "false",
  });
  search.value = params.term;
  const statusSelect = h(
    "select",
    { name: "status", class: "input", "aria-label": "Filter by status" },
    h("option", { value: "", text: "All statuses" }),
    STATUSES.map((s) => h("option", { value: s, text: s })),
    // A status from a bookmark that this page does not know still shows as chosen.
    params.status && !STATUSES.includes(params.status) ? h("option", { value: params.status, text: params.status }) : null,
  );
  statusSelect.value = params.status;
  const filters = h("form", { class: "filters", role: "search", onsubmit: (e) => e.preventDefault() }, search, statusSelect);

  const listError = h("div", { class: "alert alert-error", role: "alert", hidden: true });
  const bulk = createBulkBar(ctx, () => refresh());
  const table = createJobTable(ctx, {
    onDone: () => refresh(),
    jobLink: (id) => ({ href: ctx.link(`/jobs/${encodeURIComponent(id)}`), text: "Open" }),
  });
  const tableWrap = h("div", { class: "table-wrap" }, table.root);
  const empty = h("p", { class: "empty muted", hidden: true });
  const pageInfo = h("span", { class: "page-info muted" });
  const previous = h("button", { type: "button", class: "button", text: "← Previous", title: "Newer jobs", onclick: () => previousPage() });
  const next = h("button", { type: "button", class: "button", text: "Next →", title: "Older jobs", onclick: () => nextPage() });
  const pager = h("nav", { class: "pager", "aria-label": "Pages" }, previous, pageInfo, next);
  const listPanel = h(
    "section",
    { class: "panel" },
    h("div", { class: "panel-head" }, h("h2", { text: "Jobs" }), filters),
    bulk.root,
    listError,
    tableWrap,
    empty,
    pager,
  );

  const root = h("div", { class: "dashboard" }, h("h1", { class: "visually-hidden", text: "Dashboard" }), cards, chart.root, listPanel);

  function updatePager() {
    previous.disabled = !params.begin;
    next.disabled = !hasNext;
    const count = shownIds.length;
    const where = params.begin ? "" : ", newest first";
    setText(pageInfo, count ? `${count} job${count === 1 ? "" : "s"}${where}` : "");
  }

  function setParams(changes, { replace = false } = {}) {
    Object.assign(params, changes);
    ctx.setQuery({ term: params.term, status: params.status, begin: params.begin }, { replace });
    bulk.setFilter(params);
    generation += 1;
    refresh();
  }

  let searchTimer = null;
  search.addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => {
      if (search.value !== params.term) setParams({ term: search.value, begin: "" }, { replace: true });
    }, SEARCH_DELAY_MS);
  });
  statusSelect.addEventListener("change", () => setParams({ status: statusSelect.value, begin: "" }));

  function nextPage() {
    if (hasNext && lastNext) setParams({ begin: lastNext });
  }

  async function previousPage() {
    if (!params.begin) return;
    // The previous page holds the PAGE_SIZE matching jobs just newer than this one:
    // list forwards from the first shown id + 1 and start the page at the newest.
    let from;
    try {
      from = nextId(shownIds.length ? shownIds[0] : params.begin);
    } catch (e) {
      setParams({ begin: "" });
      return;
    }
    try {
      const data = await api.listJobs({ term: params.term, status: params.status, begin: from, limit: PAGE_SIZE });
      const ids = data.jobs.map((job) => job.id);
      if (!data.hasNext || ids.length < PAGE_SIZE) setParams({ begin: "" });
      else setParams({ begin: ids[ids.length - 1] });
    } catch (e) {
      ctx.reportError(e);
    }
  }

  function showStats(stats) {
    const perDispatcher = Math.max(1, stats.maxWorkers || 0);
    const limit = perDispatcher * (stats.dispatchers || 0);
    setText(running.value, stats.numJobsRunning);
    setText(running.note, `Concurrency limit: ${limit} (${stats.dispatchers} × ${perDispatcher})`);
    setText(queued.value, stats.numJobsInQueue);
    setText(queued.note, `Queue usage: ${percent(stats.numJobsInQueue, stats.queues)}% (${stats.numJobsInQueue} / ${stats.queues})`);
    setText(queued.extra, stats.numJobsWaiting === undefined ? "" : `Waiting in all: ${stats.numJobsWaiting}`);
    // A server without retries and delays has no scheduled jobs to show.
    scheduled.root.hidden = stats.numJobsScheduled === undefined;
    setText(scheduled.value, stats.numJobsScheduled);
    setText(scheduled.note, "due later: delayed, or waiting to retry");
    setText(stored.value, stats.numStoredJobs);
    setText(stored.note, "kept in the store");
    setText(recent.value, stats.numJobsInLastMinute);
    setText(recent.note, "created in the last 60 s");
  }

  function showList(data) {
    listError.hidden = true;
    tableWrap.hidden = false;
    const now = Date.now();
    table.update(data.jobs, now);
    bulk.fromPage(data, params.begin);
    shownIds = data.jobs.map((job) => job.id);
    hasNext = !!data.hasNext;
    lastNext = data.next || null;
    empty.hidden = shownIds.length > 0;
    const filtered = params.term || params.status;
    setText(empty, params.begin ? "No jobs on this page." : filtered ? "No jobs match the search." : "No jobs found.");
    updatePager();
  }

  function showListError(error) {
    setText(listError, error.status === 400 ? `Invalid search: ${error.message}` : error.message);
    listError.hidden = false;
    tableWrap.hidden = true;
    empty.hidden = true;
    table.update([], Date.now());
    shownIds = [];
    hasNext = false;
    updatePager();
  }

  async function refresh() {
    const mine = generation;
    const query = { term: params.term, status: params.status, begin: params.begin, limit: PAGE_SIZE, reverse: true };
    const [stats, history, list] = await Promise.allSettled([api.stats(), api.history(), api.listJobs(query)]);
    // The search changed meanwhile (a newer refresh runs), or the view is gone.
    if (mine !== generation || !alive) return;
    let failure = null;
    if (stats.status === "fulfilled") showStats(stats.value);
    else failure = stats.reason;
    if (history.status === "fulfilled") chart.update(history.value);
    else if (history.reason.status === 404) chart.showMessage("This server does not keep a throughput history.");
    else chart.showMessage(`No throughput data: ${history.reason.message}`);
    if (list.status === "fulfilled") showList(list.value);
    else if (list.reason.status > 0 && list.reason.status < 500) showListError(list.reason);
    else failure = failure || list.reason;
    ctx.connectionState(failure);
  }

  updatePager();
  bulk.setFilter(params);
  const poller = ctx.every(refresh);
  return {
    root,
    destroy: () => {
      alive = false;
      clearTimeout(searchTimer);
      poller.stop();
      bulk.destroy();
      chart.destroy();
    },
  };
}
