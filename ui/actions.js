// Stop, Restart, Restart as a new job and Delete: buttons, confirmation, API call, message.

import { api } from "./api.js";
import { h } from "./dom.js";
import { canDelete, canRestart, canStop } from "./format.js";
import { notify } from "./notify.js";

/**
 * Ask for confirmation in a modal dialog. choices: [{label, value, kind}].
 * Resolves to the chosen value, or null when cancelled.
 */
export function confirmDialog(title, message, choices) {
  return new Promise((resolve) => {
    let result = null;
    const dialog = h(
      "dialog",
      { class: "dialog", "aria-labelledby": "dialog-title" },
      h("form", { method: "dialog" },
        h("h2", { id: "dialog-title", text: title }),
        h("p", {}, message),
        h("div", { class: "dialog-buttons" },
          h("button", { type: "submit", value: "", class: "button", text: "Cancel" }),
          choices.map((choice) =>
            h("button", {
              type: "submit",
              class: `button button-${choice.kind || "primary"}`,
              text: choice.label,
              onclick: () => { result = choice.value; },
            }),
          ),
        ),
      ),
    );
    dialog.addEventListener("close", () => {
      dialog.remove();
      resolve(result);
    });
    document.body.append(dialog);
    dialog.showModal();
  });
}

const jobLabel = (id) => h("strong", { text: `job ${id}` });

/**
 * Confirm and run one action on the job `id`. kind: "stop" | "restart" | "delete".
 * hooks.onDone(kind, result) runs after a success. Errors (404, 409, no answer...)
 * are shown as messages.
 */
export async function runAction(kind, id, hooks = {}) {
  let copy = false;
  if (kind === "stop") {
    const ok = await confirmDialog("Stop job", ["Stop ", jobLabel(id), "? A running request is aborted."], [
      { label: "Stop", value: "stop", kind: "danger" },
    ]);
    if (!ok) return;
  } else if (kind === "restart" || kind === "restart-copy") {
    const choice = await confirmDialog(
      "Restart job",
      ["Run ", jobLabel(id), " again? ", "“Restart” resets this job in place; “Restart as a new job” leaves it as it is and pushes a copy."],
      [
        { label: "Restart as a new job", value: "copy", kind: kind === "restart-copy" ? "primary" : "secondary" },
        { label: "Restart", value: "same", kind: kind === "restart" ? "primary" : "secondary" },
      ],
    );
    if (!choice) return;
    copy = choice === "copy";
  } else if (kind === "delete") {
    const ok = await confirmDialog("Delete job", ["Delete ", jobLabel(id), "? This cannot be undone."], [
      { label: "Delete", value: "delete", kind: "danger" },
    ]);
    if (!ok) return;
  }
  const verb = { stop: "stop", restart: "restart", "restart-copy": "restart", delete: "delete" }[kind];
  try {
    let result;
    if (kind === "stop") {
      result = await api.stopJob(id);
      notify("success", `Job ${id} stopped.`);
    } else if (kind === "delete") {
      result = await api.deleteJob(id);
      notify("success", `Job ${id} deleted.`);
    } else {
      result = await api.restartJob(id, copy);
      if (copy) {
        const link = hooks.jobLink ? hooks.jobLink(result.id) : null;
        notify("success", `Job ${id} restarted as new job ${result.id}.`, link);
      } else {
        notify("success", `Job ${id} restarted.`);
      }
    }
    if (hooks.onDone) hooks.onDone(copy ? "restart-copy" : kind, result);
  } catch (e) {
    const code = e.status ? ` (${e.status})` : "";
    notify("error", `Could not ${verb} job ${id}: ${e.message}${code}`);
    if (hooks.onError) hooks.onError(kind, e);
  }
}

/** The signature of the buttons a job gets; rebuild the buttons only when it changes. */
export function actionSignature(job) {
  return [canStop(job), canRestart(job), canDelete(job)].join();
}

/** The action buttons allowed for `job`. */
export function actionButtons(job, hooks, { labels = "short" } = {}) {
  const id = job.id;
  const button = (kind, label, title, style) =>
    h("button", {
      type: "button",
      class: `button button-small button-${style}`,
      title,
      "aria-label": title,
      dataset: { action: kind },
      text: label,
      onclick: () => runAction(kind, id, hooks),
    });
  const long = labels === "long";
  return h(
    "span",
    { class: "actions" },
    canStop(job) ? button("stop", "Stop", `Stop job ${id}`, "danger") : null,
    canRestart(job) ? button("restart", "Restart", `Restart job ${id}`, "secondary") : null,
    canRestart(job) && long
      ? button("restart-copy", "Restart as a new job", `Restart job ${id} as a new job`, "secondary")
      : null,
    canDelete(job) ? button("delete", "Delete", `Delete job ${id}`, "danger") : null,
  );
}
