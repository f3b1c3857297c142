// The Flow page: every flow key with its jobs running and waiting, the limit in force
// (with a sparkline of its history), pause/resume, and a form to set or remove limits.

import { confirmDialog } from "./actions.js";
import { api } from "./api.js";
import { h, setAttr, setText, svg } from "./dom.js";
import { formatTime } from "./format.js";
import { notify } from "./notify.js";

const SPARK_WIDTH = 96;
const SPARK_HEIGHT = 22;
const SPARK_PAD = 2;

/** A limit or parallelism as text: 0 means "none". */
export function limitText(value) {
  return typeof value === "number" && value > 0 ? String(value) : "none";
}

/** A rate limit as text: "5 per 1 s", or "none" for a rate of 0. */
export function rateText(flow) {
  if (!(flow.rate > 0)) return "none";
  return `${flow.rate} per ${flow.period ?? 1} s`;
}

/**
 * The sparkline of a key's limit: a step line through `history` ([{at, limit}], oldest
 * first), one equal step per change (so quick changes stay visible; the title has their
 * times), ending at the limit in force. Returns an SVG element.
 */
export function sparkline(history, current) {
  const changes = Array.isArray(history) ? history : [];
  const limits = changes.map((p) => Number(p.limit) || 0);
  const inForce = Number(current) || 0;
  if (!limits.length || limits[limits.length - 1] !== inForce) limits.push(inForce);
  const peak = Math.max(1, ...limits);
  const x = (i) => SPARK_PAD + (i / limits.length) * (SPARK_WIDTH - 2 * SPARK_PAD);
  const y = (limit) => SPARK_HEIGHT - SPARK_PAD - (limit / peak) * (SPARK_HEIGHT - 2 * SPARK_PAD);
  const coords = [];
  limits.forEach((limit, i) => {
    coords.push([x(i), y(limit)], [x(i + 1), y(limit)]);
  });
  const described = changes.map((p) => `${limitText(p.limit)} at ${formatTime(p.at)}`);
  const label = described.length
    ? `Limit history: ${described.join(", ")}; now ${limitText(current)}`
    : `Limit ${limitText(current)}, unchanged`;
  return svg(
    "svg",
    {
      class: "sparkline",
      width: SPARK_WIDTH,
      height: SPARK_HEIGHT,
      viewBox: `0 0 ${SPARK_WIDTH} ${SPARK_HEIGHT}`,
      role: "img",
      "aria-label": label,
      dataset: { changes: String(changes.length) },
    },
    svg("title", { text: label }),
    svg("polyline", { points: coords.map(([a, b]) => `${a.toFixed(1)},${b.toFixed(1)}`).join(" ") }),
  );
}

/** The Flow view. ctx comes from app.js; ?key=<key> opens that key in the form. */
export function flowView(ctx) {
  document.title = "Flow | HQ";
  let alive = true;
  let selected = ctx.query.get("key") || "";

  // -- the form
  // The notes are descriptions, not part of the labels, so "Rate" names one field.
  const field = (label, input, note) => {
    input.id = `flow-${input.name}`;
    const hint = note ? h("span", { class: "form-note muted", id: `flow-${input.name}-note`, text: note }) : null;
    if (hint) input.setAttribute("aria-describedby", hint.id);
    return h("div", { class: "form-field" }, h("label", { class: "form-label", for: input.id, text: label }), input, hint);
  };
  const number = (name, attrs) => h("input", { class: "input", type: "number", name, autocomplete: "off", ...attrs });
  const key = h("input", { class: "input mono", name: "key", required: true, placeholder: "api.example.com:443", autocomplete: "off" });
  const parallelism = number("parallelism", { min: 0, step: 1, placeholder: "0 = no limit" });
  const rate = number("rate", { min: 0, step: 1, placeholder: "0 = no limit" });
  const period = number("period", { min: 0, step: "any", placeholder: "1" });
  const paused = h("input", { type: "checkbox", name: "paused" });
  const current = h("p", { class: "flow-current muted", "aria-live": "polite" });
  const formError = h("div", { class: "alert alert-error", role: "alert", hidden: true });
  const submit = h("button", { type: "submit", class: "button button-primary", text: "Save limits" });

  function fill(flow) {
    key.value = flow.key;
    parallelism.value = flow.parallelism > 0 ? String(flow.parallelism) : "";
    rate.value = flow.rate > 0 ? String(flow.rate) : "";
    period.value = flow.rate > 0 || (flow.period && flow.period !== 1) ? String(flow.period) : "";
    paused.checked = !!flow.paused;
    setText(current, describe(flow));
    formError.hidden = true;
  }

  function describe(flow) {
    const state = flow.paused ? "paused" : "active";
    const own = flow.configured ? "its own limits" : "no limits of its own";
    return `${flow.key}: ${state}, ${own}; ${flow.running} running, ${flow.waiting} waiting, limit in force ${limitText(flow.limit)}.`;
  }

  /** The form's values as a PUT body; numbers as typed, so that the server judges them. */
  function body() {
    const result = { paused: paused.checked };
    for (const [name, input] of [["parallelism", parallelism], ["rate", rate], ["period", period]]) {
      const text = input.value.trim();
      if (text !== "") result[name] = Number(text);
      else if (input.validity && input.validity.badInput) result[name] = input.value;
    }
    return result;
  }

  async function save(event) {
    event.preventDefault();
    formError.hidden = true;
    const name = key.value.trim();
    if (!name) {
      setText(formError, "Enter the flow key, such as api.example.com:443.");
      formError.hidden = false;
      return;
    }
    submit.disabled = true;
    try {
      const flow = await api.setFlow(name, body());
      notify("success", `Limits of ${flow.key} saved: parallelism ${limitText(flow.parallelism)}, rate ${rateText(flow)}${flow.paused ? ", paused" : ""}.`);
      select(flow.key, { replace: true });
      fill(flow);
      await refresh();
    } catch (e) {
      setText(formError, e.message);
      formError.hidden = false;
      const code = e.status ? ` (${e.status})` : "";
      notify("error", `Could not save the limits of ${name}: ${e.message}${code}`);
    } finally {
      submit.disabled = false;
    }
  }

  const form = h(
    "form",
    { class: "flow-form", "aria-label": "Edit limits", novalidate: true, onsubmit: save },
    current,
    formError,
    h("div", { class: "form-grid" },
      field("Flow key", key),
      field("Parallelism", parallelism, "Jobs of the key running at once; empty or 0: no limit."),
      field("Rate", rate, "Jobs started per period; empty or 0: no limit."),
      field("Period (seconds)", period, "The window the rate counts in; empty: 1 second."),
    ),
    h("div", { class: "form-actions" }, h("label", {}, paused, " Paused"), submit),
  );

  /** Open `name` in the form (and the URL). */
  function select(name, { replace = false } = {}) {
    selected = name;
    ctx.setQuery({ key: name }, { replace });
    for (const tr of tbody.children) tr.classList.toggle("selected", tr.dataset.flowKey === selected);
  }

  async function load(name) {
    try {
      const flow = await api.getFlow(name);
      if (alive && selected === name) fill(flow);
    } catch (e) {
      if (!alive) return;
      key.value = name;
      setText(formError, e.message);
      formError.hidden = false;
    }
  }

  // -- the list
  const tbody = h("tbody");
  const columns = ["Key", "Running", "Waiting", "Limit", "History", "Parallelism", "Rate", "Status", ""];
  const table = h(
    "table",
    { class: "jobs flows" },
    h("thead", {}, h("tr", {}, columns.map((t) => h("th", { scope: "col", text: t })))),
    tbody,
  );
  const empty = h("p", {
    class: "empty muted",
    text: "No flow keys yet: a key is listed while it has jobs waiting or running, or limits of its own.",
    hidden: true,
  });
  const listError = h("div", { class: "alert alert-error", role: "alert", hidden: true });

  async function act(kind, flow) {
    if (kind === "remove") {
      const label = h("strong", { text: flow.key });
      const ok = await confirmDialog("Remove limits", ["Remove the limits of ", label, "? Its jobs then run as the server's defaults allow."], [
        { label: "Remove limits", value: "remove", kind: "danger" },
      ]);
      if (!ok) return;
    }
    try {
      let result;
      if (kind === "remove") result = await api.removeFlow(flow.key);
      else if (kind === "pause") result = await api.pauseFlow(flow.key);
      else result = await api.resumeFlow(flow.key);
      const done = { remove: "Limits of %s removed.", pause: "Flow %s paused.", resume: "Flow %s resumed." }[kind];
      notify("success", done.replace("%s", flow.key));
      if (result && result.key === selected) fill(result);
    } catch (e) {
      const code = e.status ? ` (${e.status})` : "";
      const verb = { remove: "remove the limits of", pause: "pause", resume: "resume" }[kind];
      notify("error", `Could not ${verb} ${flow.key}: ${e.message}${code}`);
    }
    await refresh();
  }

  function row(flow) {
    const button = (kind, text, title, style) =>
      h("button", {
        type: "button",
        class: `button button-small button-${style}`,
        dataset: { action: kind },
        title: `${title} ${flow.key}`,
        "aria-label": `${title} ${flow.key}`,
        text,
        onclick: () => act(kind, flow),
      });
    const edit = h("button", {
      type: "button",
      class: "button button-small button-secondary",
      dataset: { action: "edit" },
      title: `Edit the limits of ${flow.key}`,
      "aria-label": `Edit the limits of ${flow.key}`,
      text: "Edit",
      onclick: () => {
        select(flow.key);
        fill(flow);
        form.scrollIntoView({ block: "nearest" });
        parallelism.focus();
      },
    });
    const cell = (name, label, text) => h("td", { class: `col-${name}`, "data-label": label, text });
    return h(
      "tr",
      { dataset: { flowKey: flow.key }, class: flow.key === selected ? "selected" : null },
      h("td", { class: "col-key mono", "data-label": "Key", text: flow.key }),
      cell("running", "Running", String(flow.running)),
      cell("waiting", "Waiting", String(flow.waiting)),
      cell("limit", "Limit", limitText(flow.limit)),
      h("td", { class: "col-history", "data-label": "History" }, sparkline(flow.limitHistory, flow.limit)),
      cell("parallelism", "Parallelism", limitText(flow.parallelism)),
      cell("rate", "Rate", rateText(flow)),
      h("td", { class: "col-status", "data-label": "Status" },
        h("span", { class: flow.paused ? "status status-other" : "status status-success", text: flow.paused ? "paused" : "active" })),
      h("td", {}, h("span", { class: "actions" },
        flow.paused ? button("resume", "Resume", "Resume", "secondary") : button("pause", "Pause", "Pause", "secondary"),
        edit,
        flow.configured || flow.paused ? button("remove", "Remove limits", "Remove the limits of", "danger") : null,
      )),
    );
  }

  let shown = "";
  async function refresh() {
    let data;
    try {
      data = await api.listFlows();
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
    const flows = data.flows || [];
    // Rebuild only when something changed.
    const signature = JSON.stringify(flows) + selected;
    if (signature === shown) return;
    shown = signature;
    // Keep the focused button focused across the rebuild.
    const focused = document.activeElement;
    const focusKey = focused && tbody.contains(focused) ? [focused.closest("tr").dataset.flowKey, focused.dataset.action] : null;
    tbody.replaceChildren(...flows.map((f) => row(f)));
    if (focusKey) {
      for (const tr of tbody.children) {
        if (tr.dataset.flowKey !== focusKey[0]) continue;
        const again = [...tr.querySelectorAll("button")].find((b) => b.dataset.action === focusKey[1]);
        if (again) again.focus();
      }
    }
    empty.hidden = flows.length > 0;
    setAttr(table, "hidden", flows.length === 0 ? "" : null);
  }

  const root = h(
    "div",
    { class: "flow-page" },
    h("nav", { class: "breadcrumb", "aria-label": "Breadcrumb" }, h("a", { href: ctx.link("/"), "data-link": "", text: "Dashboard" }), " › Flow"),
    h("h1", { text: "Flow" }),
    h("section", { class: "panel" }, listError, h("div", { class: "table-wrap" }, table), empty),
    h("section", { class: "panel" }, h("h2", { text: "Edit limits" }), form),
  );
  setText(current, "Pick a key's Edit button, or enter a key to set its limits.");
  if (selected) {
    key.value = selected;
    load(selected);
  }
  const poller = ctx.every(refresh);
  return {
    root,
    destroy() {
      alive = false;
      poller.stop();
    },
  };
}
