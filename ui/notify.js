// Visible messages: success messages fade after a few seconds; errors stay until closed.

import { h } from "./dom.js";

const SUCCESS_MS = 5000;
const MAX_MESSAGES = 5;

/** Show a message. kind: "success" | "error". link: optional in-app {href, text}. */
export function notify(kind, text, link) {
  const area = document.getElementById("toasts");
  const close = () => toast.remove();
  const toast = h(
    "div",
    { class: `toast toast-${kind}`, role: kind === "error" ? "alert" : "status" },
    h("span", { class: "toast-text", text }),
    link ? h("a", { href: link.href, class: "toast-link", "data-link": "", text: link.text }) : null,
    h("button", { type: "button", class: "toast-close", "aria-label": "Close", title: "Close", text: "×", onclick: close }),
  );
  area.append(toast);
  while (area.children.length > MAX_MESSAGES) area.firstElementChild.remove();
  if (kind !== "error") setTimeout(close, SUCCESS_MS);
  return toast;
}
