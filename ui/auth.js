// API tokens: when the server answers 401, the page asks for a token once, keeps it
// for this browser tab only (sessionStorage: never a cookie, so no CSRF surface) and
// api.js sends it as "Authorization: Bearer <token>". "Sign out" forgets it.

import { h } from "./dom.js";

const KEY = "hq-token";
/** Fired on window after sign-in or sign-out, so views load again. */
export const AUTH_EVENT = "hq-auth";

let dialog = null;
let control = null;
let asked = false;

/** The stored token, or "" when there is none. */
export function token() {
  try {
    return sessionStorage.getItem(KEY) || "";
  } catch (e) {
    return "";
  }
}

function store(value) {
  try {
    if (value) sessionStorage.setItem(KEY, value);
    else sessionStorage.removeItem(KEY);
  } catch (e) {
    // Storage refused (private mode quirks): the token is not kept.
  }
  updateControl();
}

/** Headers that carry the token, if one is stored. */
export function authHeaders() {
  const value = token();
  return value ? { Authorization: `Bearer ${value}` } : {};
}

/**
 * The server answered 401 (message: its error text). A stored token was refused:
 * forget it and ask again, saying why. No token: ask once; after "Cancel" the top
 * bar's "Sign in" opens the form (polling views do not reopen it every refresh).
 */
export function tokenRequired(message) {
  asked = true;
  const refused = !!token();
  if (refused) store("");
  if (refused || !dialog) showForm(message);
  else updateControl();
}

/** Forget the token and ask for one again. */
export function signOut() {
  store("");
  showForm("Signed out. Enter an API token to continue.");
  window.dispatchEvent(new Event(AUTH_EVENT));
}

function showForm(message) {
  updateControl();
  if (dialog) {
    dialog.querySelector(".signin-message").textContent = message;
    if (!dialog.open) dialog.showModal();
    return;
  }
  const input = h("input", {
    id: "hq-token-input",
    name: "token",
    type: "password",
    autocomplete: "off",
    spellcheck: "false",
    required: true,
    class: "signin-input",
  });
  const form = h(
    "form",
    { method: "dialog", class: "signin-form" },
    h("h2", { id: "signin-title", text: "Sign in to HQ" }),
    h("p", { class: "signin-message alert alert-error", role: "alert", text: message }),
    h("label", { for: "hq-token-input", text: "API token" }),
    input,
    h("p", { class: "muted signin-note", text: "Kept in this browser tab only, until you sign out or close it." }),
    h(
      "div",
      { class: "dialog-buttons" },
      h("button", { type: "button", class: "button", text: "Cancel", onclick: () => dialog.close() }),
      h("button", { type: "submit", class: "button button-primary", text: "Sign in" }),
    ),
  );
  form.addEventListener("submit", (event) => {
    const value = input.value.trim();
    if (!value) {
      event.preventDefault();
      return;
    }
    store(value);
    input.value = "";
    window.dispatchEvent(new Event(AUTH_EVENT));
  });
  dialog = h("dialog", { class: "dialog signin", id: "hq-signin", "aria-labelledby": "signin-title" }, form);
  document.body.append(dialog);
  dialog.showModal();
  input.focus();
}

/** The top bar's "Sign in" / "Sign out" button: shown once tokens are in play. */
function updateControl() {
  const bar = document.querySelector(".topbar");
  if (!bar) return;
  if (!control) {
    control = h("button", { type: "button", id: "hq-signout", class: "topbar-button" });
    control.addEventListener("click", () => (token() ? signOut() : showForm("Enter an API token.")));
    bar.insertBefore(control, document.getElementById("theme-toggle"));
  }
  const signedIn = !!token();
  control.textContent = signedIn ? "Sign out" : "Sign in";
  control.title = signedIn ? "Forget the API token in this tab" : "Enter an API token";
  control.hidden = !signedIn && !asked;
}

updateControl();
