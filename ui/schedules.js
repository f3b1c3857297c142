// The Schedules page: every schedule with its next and last run, pause/resume/delete,
// and a form to add one with its cron expression explained in words.

import { confirmDialog } from "./actions.js";
import { api } from "./api.js";
import { describeCron, explainCron } from "./cron.js";
import { h, setAttr, setText } from "./dom.js";
import { formatRelative, formatTime } from "./format.js";
import { notify } from "./notify.js";

const COMMON_ZONES = ["UTC", "Europe/Berlin", "Europe/London", "America/New_York", "America/Los_Angeles", "Asia/Tokyo"];

function zones() {
  try {
    return Intl.supportedValuesOf("timeZone");
  } catch (e) {
    return COMMON_ZONES;
  }
}

function timeCell(iso, now) {
  if (!iso) return h("td", { text: "–" });
  return h("td", { title: iso }, formatTime(iso), h("span", { class: "due muted", text: formatRelative(iso, now) }));
}

/** The schedules view. ctx comes from app.js. */
export function schedulesView(ctx) {
  document.title = "Schedules | HQ";
  let alive = true;

  // -- the form
  const field = (label, input, note) =>
    h("label", { class: "form-field" }, h("span", { class: "form-label", text: label }), input, note || null);
  const name = h("input", { class: "input", name: "name", placeholder: "nightly-report", autocomplete: "off" });
  const cron = h("input", { class: "input mono", name: "cron", required: true, placeholder: "30 2 * * *", autocomplete: "off" });
  const timezone = h("input", { class: "input", name: "timezone", value: "UTC", list: "hq-zones", autocomplete: "off" });
  const zoneList = h("datalist", { id: "hq-zones" }, zones().map((z) => h("option", { value: z })));
  const url = h("input", { class: "input", name: "url", type: "url", required: true, placeholder: "https://worker.example/run" });
  const payload = h("textarea", { class: "input mono", name: "payload", rows: 2, placeholder: '{"report": "daily"} (optional JSON)' });
  const paused = h("input", { type: "checkbox", name: "paused" });
  const explained = h("p", { class: "cron-explained muted", dataset: { testid: "cron-explained" }, "aria-live": "polite" });
  const formError = h("div", { class: "alert alert-error", role: "alert", hidden: true });
  const submit = h("button", { type: "submit", class: "button button-primary", text: "Add schedule" });

  function explain() {
    const text = cron.value.trim();
    if (!text) {
      setText(explained, "5 fields (minute hour day month weekday), or 6 with seconds first.");
      return;
    }
    const words = explainCron(text, timezone.value.trim() || "UTC");
    setText(explained, words ? `Runs ${words}.` : `Runs at the times “${text}” names.`);
  }
  cron.addEventListener("input", explain);
  timezone.addEventListener("input", explain);
  explain();

  async function add(event) {
    event.preventDefault();
    formError.hidden = true;
    const job = { url: url.value.trim() };
    if (payload.value.trim()) {
      try {
        job.payload = JSON.parse(payload.value);
      } catch (e) {
        setText(formError, `The payload is not JSON: ${e.message}`);
        formError.hidden = false;
        return;
      }
    }
    const body = { cron: cron.value.trim(), timezone: timezone.value.trim() || "UTC", job, paused: paused.checked };
    if (name.value.trim()) body.name = name.value.trim();
    submit.disabled = true;
    try {
      const schedule = await api.addSchedule(body);
      notify("success", `Schedule ${schedule.name} added: ${describeCron(schedule.cron, schedule.timezone)}.`);
      form.reset();
      timezone.value = "UTC";
      explain();
      await refresh();
    } catch (e) {
      setText(formError, e.message);
      formError.hidden = false;
      notify("error", `Could not add the schedule: ${e.message}`);
    } finally {
      submit.disabled = false;
    }
  }

  const form = h(
    "form",
    { class: "schedule-form", "aria-label": "Add a schedule", onsubmit: add },
    formError,
    h("div", { class: "form-grid" },
      field("Name", name),
      field("Cron", cron, explained),
      field("Time zone", timezone, zoneList),
      field("Job URL", url),
      field("Payload", payload),
    ),
    h("div", { class: "form-actions" }, h("label", {}, paused, " Add it paused"), submit),
  );

  // -- the list
  const tbody = h("tbody");
  const table = h(
    "table",
    { class: "jobs schedules" },
    h("thead", {}, h("tr", {}, ["Name", "Runs", "Next run", "Last run", "Last job", "Status", ""].map((t) => h("th", { scope: "col", text: t })))),
    tbody,
  );
  const empty = h("p", { class: "empty muted", text: "No schedules yet: add one below.", hidden: true });
  const listError = h("div", { class: "alert alert-error", role: "alert", hidden: true });

  async function act(kind, schedule) {
    const label = h("strong", { text: `${schedule.name} (${schedule.id})` });
    if (kind === "delete") {
      const ok = await confirmDialog("Delete schedule", ["Delete the schedule ", label, "? The jobs it made stay. This cannot be undone."], [
        { label: "Delete", value: "delete", kind: "danger" },
      ]);
      if (!ok) return;
    }
    try {
      if (kind === "delete") await api.deleteSchedule(schedule.id);
      else if (kind === "pause") await api.pauseSchedule(schedule.id);
      else await api.resumeSchedule(schedule.id);
      const done = { delete: "deleted", pause: "paused", resume: "resumed" }[kind];
      notify("success", `Schedule ${schedule.name} ${done}.`);
    } catch (e) {
      const code = e.status ? ` (${e.status})` : "";
      notify("error", `Could not ${kind} schedule ${schedule.id}: ${e.message}${code}`);
    }
    await refresh();
  }

  function row(schedule, now) {
    const button = (kind, text, style) =>
      h("button", {
        type: "button",
        class: `button button-small button-${style}`,
        dataset: { action: kind },
        title: `${text} schedule ${schedule.name}`,
        "aria-label": `${text} schedule ${schedule.name}`,
        text,
        onclick: () => act(kind, schedule),
      });
    const lastJob = schedule.lastJobId
      ? h("a", { href: ctx.link(`/jobs/${encodeURIComponent(schedule.lastJobId)}`), "data-link": "", class: "job-link", text: schedule.lastJobId })
      : "–";
    return h(
      "tr",
      { dataset: { scheduleId: schedule.id } },
      h("td", { class: "col-name" }, h("strong", { text: schedule.name }), h("span", { class: "due muted mono", text: schedule.id })),
      h("td", {}, describeCron(schedule.cron, schedule.timezone), h("span", { class: "due muted mono", text: `${schedule.cron} · ${schedule.timezone}` })),
      timeCell(schedule.nextRunAt, now),
      timeCell(schedule.lastRunAt, now),
      h("td", {}, lastJob),
      h("td", {}, h("span", { class: schedule.paused ? "status status-other" : "status status-success", text: schedule.paused ? "paused" : "active" })),
      h("td", {}, h("span", { class: "actions" },
        schedule.paused ? button("resume", "Resume", "secondary") : button("pause", "Pause", "secondary"),
        button("delete", "Delete", "danger"),
      )),
    );
  }

  let shown = "";
  async function refresh() {
    let data;
    try {
      data = await api.listSchedules();
    } catch (e) {
      if (!alive) return;
      if (e.status > 0 && e.status < 500) {
        setText(listError, e.message);
        listError.hidden = false;
      } else {
        ctx.connectionState(e);
      }
      return;
    }
    if (!alive) return;
    ctx.connectionState(null);
    listError.hidden = true;
    const now = Date.now();
    const schedules = data.schedules || [];
    // Rebuild only when something changed (or every 30 s, for the relative times).
    const signature = JSON.stringify(schedules) + Math.floor(now / 30000);
    if (signature === shown) return;
    shown = signature;
    tbody.replaceChildren(...schedules.map((s) => row(s, now)));
    empty.hidden = schedules.length > 0;
    setAttr(table, "hidden", schedules.length === 0 ? "" : null);
  }

  const root = h(
    "div",
    { class: "schedules-page" },
    h("nav", { class: "breadcrumb", "aria-label": "Breadcrumb" }, h("a", { href: ctx.link("/"), "data-link": "", text: "Dashboard" }), " › Schedules"),
    h("h1", { text: "Schedules" }),
    h("section", { class: "panel" }, listError, h("div", { class: "table-wrap" }, table), empty),
    h("section", { class: "panel" }, h("h2", { text: "Add a schedule" }), form),
  );
  const poller = ctx.every(refresh);
  return {
    root,
    destroy() {
      alive = false;
      poller.stop();
    },
  };
}
