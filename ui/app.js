// The HQ web UI: reads the server's settings, routes between views, polls the API.

import { AUTH_EVENT } from "./auth.js";
import { dashboardView } from "./dashboard.js";
import { detailView } from "./detail.js";
import { h, setText } from "./dom.js";
import { flowView } from "./flow.js";
import { notify } from "./notify.js";
import { schedulesView } from "./schedules.js";

/** How often views refresh. */
export const REFRESH_MS = 2000;

const config = JSON.parse(document.getElementById("hq-config").textContent);
// The basename as it appears in URLs (percent-encoded), without a trailing slash.
const baseUrl = config.baseUrl;
const main = document.getElementById("app");
const banner = h("div", { class: "alert alert-error connection", role: "alert", hidden: true });
const outlet = h("div", { class: "outlet" });
let current = null;

/** Repeat fn every REFRESH_MS after it finishes (never overlapping); paused while the tab is hidden. */
function every(fn, ms = REFRESH_MS) {
  let stopped = false;
  let timer = null;
  const tick = async () => {
    timer = null;
    if (stopped) return;
    if (document.visibilityState !== "hidden") {
      try {
        await fn();
      } catch (e) {
        console.error(e);
      }
    }
    if (!stopped) timer = setTimeout(tick, ms);
  };
  tick();
  return {
    stop() {
      stopped = true;
      clearTimeout(timer);
    },
  };
}

/** Show (error) or clear (null) the banner saying the server cannot be reached. */
function connectionState(error) {
  if (error) setText(banner, `${error.message}. Retrying…`);
  banner.hidden = !error;
}

function link(path) {
  return baseUrl + path;
}

function navigate(path, { replace = false } = {}) {
  const url = link(path);
  if (replace) history.replaceState(null, "", url);
  else history.pushState(null, "", url);
  render();
  window.scrollTo(0, 0);
}

/** Put the view's own state in the URL without rendering again. */
function setQuery(values, { replace = false } = {}) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(values)) if (value) query.set(key, value);
  const text = query.toString();
  const url = location.pathname + (text ? "?" + text : "");
  if (replace) history.replaceState(null, "", url);
  else history.pushState(null, "", url);
}

function reportError(error) {
  notify("error", error.message);
}

function notFoundView(ctx) {
  document.title = "Not found | HQ";
  const root = h(
    "div",
    { class: "panel" },
    h("h1", { text: "Page not found" }),
    h("p", {}, "There is nothing here. ", h("a", { href: ctx.link("/"), "data-link": "", text: "Back to the dashboard" })),
  );
  return { root, destroy() {} };
}

function route() {
  let path = location.pathname;
  if (path.startsWith(baseUrl)) path = path.slice(baseUrl.length);
  if (path === "" || path === "/") return (ctx) => dashboardView(ctx);
  if (/^\/schedules\/?$/.test(path)) return (ctx) => schedulesView(ctx);
  if (/^\/flow\/?$/.test(path)) return (ctx) => flowView(ctx);
  const match = /^\/jobs\/([^/]+)\/?$/.exec(path);
  if (match) {
    let id;
    try {
      id = decodeURIComponent(match[1]);
    } catch (e) {
      id = match[1];
    }
    return (ctx) => detailView(ctx, id);
  }
  return notFoundView;
}

function render() {
  if (current) current.destroy();
  connectionState(null);
  const ctx = {
    config,
    query: new URLSearchParams(location.search),
    link,
    navigate,
    setQuery,
    every,
    connectionState,
    reportError,
  };
  current = route()(ctx);
  outlet.replaceChildren(current.root);
}

function onClick(event) {
  const anchor = event.target.closest && event.target.closest("a[data-link]");
  if (!anchor || event.defaultPrevented || event.button !== 0) return;
  if (event.metaKey || event.ctrlKey || event.shiftKey || event.altKey || anchor.target) return;
  const url = new URL(anchor.href, location.href);
  if (url.origin !== location.origin || !url.pathname.startsWith(baseUrl)) return;
  event.preventDefault();
  history.pushState(null, "", url.pathname + url.search + url.hash);
  render();
  window.scrollTo(0, 0);
}

function toggleTheme() {
  const root = document.documentElement;
  const dark = root.dataset.theme
    ? root.dataset.theme === "dark"
    : window.matchMedia("(prefers-color-scheme: dark)").matches;
  root.dataset.theme = dark ? "light" : "dark";
  try {
    localStorage.setItem("hq-theme", root.dataset.theme);
  } catch (e) {
    // Not saved; the choice lasts for this page only.
  }
}

setText(document.getElementById("hq-version"), config.version);
document.getElementById("theme-toggle").addEventListener("click", toggleTheme);
document.addEventListener("click", onClick);
window.addEventListener("popstate", render);
window.addEventListener(AUTH_EVENT, render);
main.replaceChildren(banner, outlet);
render();
