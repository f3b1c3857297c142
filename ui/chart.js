// The throughput chart: jobs finished per interval (success, failure, canceled),
// drawn as stacked SVG bars from GET /stats/history.

import { h, replaceChildren, setText, svg } from "./dom.js";
import { formatTime } from "./format.js";

const MIN_WIDTH = 300;
const HEIGHT = 180;
const LEFT = 36;
const RIGHT = 8;
const TOP = 10;
const BOTTOM = 22;
const SERIES = [
  ["success", "succeeded"],
  ["failure", "failed"],
  ["canceled", "canceled"],
];

function niceMax(value) {
  if (value <= 4) return 4;
  const magnitude = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) {
    if (step * magnitude >= value) return step * magnitude;
  }
  return 10 * magnitude;
}

function intervalText(seconds) {
  return seconds % 60 === 0 ? `${seconds / 60} min` : `${seconds} s`;
}

/** The chart's container; call update(history) with each answer from /stats/history. */
export function createChart() {
  const title = h("h2", { text: "Throughput" });
  const summary = h("p", { class: "chart-summary muted" });
  const plot = svg("svg", {
    class: "chart",
    height: HEIGHT,
    role: "img",
    "aria-label": "Jobs finished per interval",
  });
  const legend = h(
    "p",
    { class: "legend" },
    SERIES.map(([key, label]) => h("span", { class: `legend-item legend-${key}` }, h("i"), label)),
  );
  const message = h("p", { class: "muted", hidden: true });
  const root = h("section", { class: "panel chart-panel" }, title, summary, plot, legend, message);

  function showMessage(text) {
    setText(message, text);
    message.hidden = false;
    plot.style.display = "none";
  }

  // Drawn in CSS pixels at the plot's real width, so text is never scaled.
  let last = null;
  let drawnWidth = 0;
  const observer = new ResizeObserver(() => {
    if (last && Math.abs(plot.clientWidth - drawnWidth) > 1) update(last);
  });
  observer.observe(root);

  function update(history) {
    last = history;
    const buckets = (history && history.buckets) || [];
    const interval = (history && history.interval) || 10;
    if (!buckets.length) {
      showMessage("No throughput data yet.");
      return;
    }
    message.hidden = true;
    plot.style.display = "";
    const span = intervalText(interval * buckets.length);
    setText(title, `Throughput, jobs finished per ${intervalText(interval)}`);
    const totals = { success: 0, failure: 0, canceled: 0 };
    let peak = 0;
    for (const b of buckets) {
      for (const [key] of SERIES) totals[key] += b[key] || 0;
      peak = Math.max(peak, (b.success || 0) + (b.failure || 0) + (b.canceled || 0));
    }
    setText(
      summary,
      `Last ${span}: ${totals.success} succeeded, ${totals.failure} failed, ${totals.canceled} canceled`,
    );
    const max = niceMax(peak);
    const width = Math.max(MIN_WIDTH, plot.clientWidth || root.clientWidth || 720);
    drawnWidth = width;
    plot.setAttribute("viewBox", `0 0 ${width} ${HEIGHT}`);
    const plotWidth = width - LEFT - RIGHT;
    const plotHeight = HEIGHT - TOP - BOTTOM;
    const barWidth = plotWidth / buckets.length;
    const y = (value) => TOP + plotHeight - (value / max) * plotHeight;
    const nodes = [];
    for (const tick of [0, max / 2, max]) {
      nodes.push(svg("line", { class: "grid", x1: LEFT, x2: width - RIGHT, y1: y(tick), y2: y(tick) }));
      nodes.push(svg("text", { class: "axis", x: LEFT - 6, y: y(tick) + 4, "text-anchor": "end", text: String(tick) }));
    }
    buckets.forEach((b, i) => {
      const x = LEFT + i * barWidth;
      let base = 0;
      const group = svg("g", { class: "bar" });
      const parts = [];
      for (const [key, label] of SERIES) {
        const count = b[key] || 0;
        parts.push(`${count} ${label}`);
        if (!count) continue;
        group.append(
          svg("rect", {
            class: `bar-${key}`,
            x: x + barWidth * 0.1,
            width: Math.max(1, barWidth * 0.8),
            y: y(base + count),
            height: y(base) - y(base + count),
          }),
        );
        base += count;
      }
      // A transparent full-height target so the tooltip works on empty bars too.
      group.append(svg("rect", { class: "bar-hit", x, width: barWidth, y: TOP, height: plotHeight }));
      group.append(svg("title", { text: `${formatTime(b.start)}: ${parts.join(", ")}` }));
      nodes.push(group);
    });
    const labels = [
      [LEFT, "start", `−${span}`],
      [LEFT + plotWidth / 2, "middle", `−${intervalText((interval * buckets.length) / 2)}`],
      [width - RIGHT, "end", "now"],
    ];
    for (const [x, anchor, text] of labels) {
      nodes.push(svg("text", { class: "axis", x, y: HEIGHT - 6, "text-anchor": anchor, text }));
    }
    replaceChildren(plot, nodes);
  }

  return { root, update, showMessage, destroy: () => observer.disconnect() };
}
