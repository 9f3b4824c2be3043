// The job editor: create, edit and clone, every field of the API. The API's problem details
// are shown at the field they name; a live preview shows the next fires with DST notes; a save
// sends If-Match, and a conflict keeps the form as it is and says what happened.

import { ApiError, api } from "./api.js";
import { me } from "./app.js";
import { append, browserZone, clear, h, say, when } from "./dom.js";

const ZONES = typeof Intl.supportedValuesOf === "function" ? Intl.supportedValuesOf("timeZone") : [];

// "a=b" lines <-> {a: "b"} (labels, env), "Name: value" lines for headers.
function toMap(text, sep) {
  const out = {};
  for (const line of text.split("\n")) {
    if (!line.trim()) continue;
    const at = line.indexOf(sep);
    if (at < 0) out[line.trim()] = "";
    else out[line.slice(0, at).trim()] = line.slice(at + sep.length).replace(/^ /, "");
  }
  return out;
}
const fromMap = (map, sep) => Object.entries(map || {}).map(([k, v]) => `${k}${sep}${v}`).join("\n");
const list = (text) => text.split(",").map((s) => s.trim()).filter(Boolean);

export async function editorPage(ctx, id, mode) {
  const original = id ? await api("GET", `/v1/jobs/${id}`, { signal: ctx.signal }) : null;
  let revision = original ? original.revision : null;
  const job = original || {};
  const title = mode === "create" ? "New job" : mode === "clone" ? `Clone of ${job.name}` : `Edit ${job.name}`;
  document.title = `${title} · cronbus`;
  const inputs = {};

  // One labelled control; `name` is the API's field path, where its problems are shown.
  function control(name, label, input, help) {
    input.id = `in-${name.replace(/\W/g, "-")}`;
    input.name = name;
    inputs[name] = input;
    const error = h("p", { class: "field-error", id: `${input.id}-error`, "data-error-for": name });
    input.setAttribute("aria-describedby", `${input.id}-error${help ? ` ${input.id}-help` : ""}`);
    return h("div", { class: "field", "data-field": name },
      h("label", { for: input.id, text: label }), input,
      help ? h("p", { class: "muted help", id: `${input.id}-help`, text: help }) : null, error);
  }
  const text = (value, attrs = {}) => h("input", { value: value ?? "", ...attrs });
  const area = (value, rows = 3) => { const el = h("textarea", { rows }); el.value = value ?? ""; return el; };
  const select = (value, options) => h("select", {}, options.map((o) => h("option", { value: o, text: o, selected: o === value })));

  const ex = job.executor || { type: "shell", command: "", env: {}, secrets: [] };
  const command = Array.isArray(ex.command) ? JSON.stringify(ex.command) : ex.command || "";
  const zoneList = h("datalist", { id: "zones" }, ZONES.map((z) => h("option", { value: z })));
  const executorType = select(ex.type, ["shell", "http"]);
  const shellFields = h("fieldset", {}, h("legend", { text: "Shell" }),
    control("executor.command", "Command", area(command, 3), "Run with /bin/sh -c; a JSON array of arguments runs it directly."),
    control("executor.env", "Environment", area(fromMap(ex.type === "shell" ? ex.env : {}, "="), 2), "NAME=value, one per line"),
    control("executor.cwd", "Working directory", text(ex.cwd)),
    control("executor.secrets", "Secret variables", text((ex.type === "shell" ? ex.secrets : []).join(", ")), "names of variables shown as *** once saved"));
  const httpFields = h("fieldset", {}, h("legend", { text: "HTTP" }),
    control("executor.url", "URL", text(ex.url, { type: "url" })),
    control("executor.method", "Method", select(ex.method || "GET", ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"])),
    control("executor.headers", "Headers", area(fromMap(ex.headers, ": "), 2), "Name: value, one per line"),
    control("executor.body", "Body", area(ex.body, 2)),
    control("executor.expect_status", "Expected status codes", text((ex.expect_status || []).join(", ")), "any 2xx when empty"),
    control("executor.follow_redirects", "Follow redirects", h("input", { type: "checkbox", checked: ex.follow_redirects ?? true })),
    control("executor.max_body_bytes", "Response bytes kept", text(ex.max_body_bytes ?? 1048576, { inputmode: "numeric" })),
    control("executor.http_secrets", "Secret headers", text((ex.type === "http" ? ex.secrets : []).join(", "))));
  const showExecutor = () => {
    shellFields.hidden = executorType.value !== "shell";
    httpFields.hidden = executorType.value !== "http";
  };
  executorType.addEventListener("change", showExecutor);
  showExecutor();

  const catchup = job.catchup || { policy: "latest", window: "1h" };
  const retries = job.retries || { max_attempts: 1, backoff: "10s", multiplier: 2, max_backoff: "1h" };
  const retention = job.retention || { runs: null, log_bytes: null };
  const timezone = text(job.timezone || "UTC", { list: "zones", autocomplete: "off" });
  const schedule = text(job.schedule, { autocomplete: "off", spellcheck: "false", placeholder: "0 3 * * *" });
  const previewList = h("ol", { class: "preview", "aria-live": "polite" });
  const formError = h("div", { class: "form-error", role: "alert" });

  const form = h("form", { class: "editor", novalidate: true, "aria-labelledby": "editor-title" },
    h("h1", { id: "editor-title", text: title }),
    formError,
    h("div", { class: "columns" },
      h("div", {},
        h("fieldset", {}, h("legend", { text: "Job" }),
          control("name", "Name", text(mode === "clone" ? `${job.name} (copy)` : job.name, { required: true })),
          control("description", "Description", area(job.description, 2)),
          control("labels", "Labels", area(fromMap(job.labels, "="), 2), "key=value, one per line"),
          control("pool", "Pool", text(job.pool || "default"))),
        h("fieldset", {}, h("legend", { text: "When" }),
          control("schedule", "Schedule", schedule, "cron (5 fields, or 6 with seconds), @hourly, @every 90s, @at 2030-01-31T09:00:00Z"),
          control("timezone", "Time zone", timezone, `IANA name; this browser is in ${browserZone}`), zoneList,
          control("start_at", "Start at", text(job.start_at, { placeholder: "2030-01-01T00:00:00Z" }), "ISO-8601 with offset; empty: now"),
          control("end_at", "End at", text(job.end_at, { placeholder: "empty: never" })),
          control("anchor", "Anchor (@every)", text(mode === "clone" ? "" : job.anchor, { placeholder: "empty: creation time" })),
          control("jitter", "Jitter", text(job.jitter ?? "0s"))),
        h("fieldset", {}, h("legend", { text: "Executor" }),
          control("executor.type", "Type", executorType), shellFields, httpFields)),
      h("div", {},
        h("section", { class: "card", "aria-labelledby": "preview-title" },
          h("h2", { id: "preview-title", text: "Next 10 fires" }), previewList),
        h("fieldset", {}, h("legend", { text: "Policies" }),
          control("timeout", "Timeout", text(job.timeout, { placeholder: "none" })),
          control("overlap", "Overlap", select(job.overlap || "allow", ["allow", "skip", "queue", "replace"])),
          control("catchup.policy", "Catch-up", select(catchup.policy, ["skip", "latest", "all"])),
          control("catchup.window", "Catch-up window", text(catchup.window)),
          control("retries.max_attempts", "Attempts", text(retries.max_attempts, { inputmode: "numeric" })),
          control("retries.backoff", "Retry backoff", text(retries.backoff)),
          control("retries.multiplier", "Backoff multiplier", text(retries.multiplier, { inputmode: "decimal" })),
          control("retries.max_backoff", "Longest backoff", text(retries.max_backoff)),
          control("retention.runs", "Runs kept", text(retention.runs, { inputmode: "numeric", placeholder: "server default" })),
          control("retention.log_bytes", "Output kept", text(retention.log_bytes, { placeholder: "server default, e.g. 50MB" }))))),
    h("div", { class: "actions" },
      h("button", { type: "submit", text: mode === "edit" ? "Save" : "Create" }),
      h("a", { href: id && mode === "edit" ? `#/jobs/${id}` : "#/", text: "Cancel" })));
  ctx.root.append(form);

  const value = (name) => inputs[name].value.trim();
  const num = (name) => {
    const v = value(name);
    return v === "" ? null : Number.isFinite(Number(v)) ? Number(v) : v; // the API names a wrong one
  };
  const opt = (name) => value(name) || null;

  function body() {
    const type = executorType.value;
    let executor;
    if (type === "shell") {
      const raw = inputs["executor.command"].value;
      let cmd = raw;
      if (raw.trim().startsWith("[")) {
        try { cmd = JSON.parse(raw); } catch { cmd = raw; }
      }
      executor = { type, command: cmd, env: toMap(inputs["executor.env"].value, "="), cwd: opt("executor.cwd"), secrets: list(value("executor.secrets")) };
    } else {
      executor = {
        type, url: value("executor.url"), method: value("executor.method"),
        headers: toMap(inputs["executor.headers"].value, ":"), body: inputs["executor.body"].value || null,
        expect_status: list(value("executor.expect_status")).map(Number),
        follow_redirects: inputs["executor.follow_redirects"].checked,
        max_body_bytes: num("executor.max_body_bytes") ?? 1048576, secrets: list(value("executor.http_secrets")),
      };
    }
    const durationOrNumber = (name) => { const v = value(name); return v === "" ? null : /^\d+(\.\d+)?$/.test(v) ? Number(v) : v; };
    return {
      name: value("name"), description: inputs.description.value, labels: toMap(inputs.labels.value, "="),
      pool: value("pool"), schedule: value("schedule"), timezone: value("timezone") || "UTC",
      start_at: opt("start_at"), end_at: opt("end_at"), anchor: opt("anchor"),
      jitter: durationOrNumber("jitter") ?? 0, executor,
      timeout: durationOrNumber("timeout"), overlap: value("overlap"),
      catchup: { policy: value("catchup.policy"), window: durationOrNumber("catchup.window") ?? "1h" },
      retries: {
        max_attempts: num("retries.max_attempts") ?? 1, backoff: durationOrNumber("retries.backoff") ?? "10s",
        multiplier: num("retries.multiplier") ?? 2, max_backoff: durationOrNumber("retries.max_backoff") ?? "1h",
      },
      retention: { runs: num("retention.runs"), log_bytes: num("retention.log_bytes") },
    };
  }

  function clearErrors() {
    formError.textContent = "";
    for (const el of form.querySelectorAll("[data-error-for]")) el.textContent = "";
    for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
  }

  // Shows each {field, reason} at the control with the longest matching field path
  // ("executor.env.FOO" -> "executor.env"); what matches none goes to the top.
  function showErrors(errors, fallback) {
    const loose = [];
    let first = null;
    for (const { field, reason } of errors) {
      let name = field === "executor.secrets" && executorType.value === "http" ? "executor.http_secrets" : field;
      while (name && !inputs[name]) name = name.includes(".") ? name.slice(0, name.lastIndexOf(".")) : "";
      if (!name) {
        loose.push(`${field}: ${reason}`);
        continue;
      }
      const target = form.querySelector(`[data-error-for="${CSS.escape(name)}"]`);
      target.textContent = target.textContent ? `${target.textContent}; ${reason}` : reason;
      inputs[name].setAttribute("aria-invalid", "true");
      first = first || inputs[name];
    }
    if (loose.length || (!errors.length && fallback)) formError.textContent = [...loose, ...(errors.length ? [] : [fallback])].join("; ");
    (first || formError).focus?.();
  }

  let previewTimer = 0;
  let previewSeq = 0;
  async function refreshPreview() {
    const seq = ++previewSeq;
    const errorEl = form.querySelector('[data-error-for="schedule"]');
    if (!value("schedule")) {
      clear(previewList).append(h("li", { class: "muted", text: "Type a schedule to see when it fires." }));
      return;
    }
    try {
      const answer = await api("POST", "/v1/schedule/preview", {
        body: { schedule: value("schedule"), timezone: value("timezone") || "UTC", count: 10, anchor: opt("anchor") },
        signal: ctx.signal,
      });
      if (seq !== previewSeq) return;
      errorEl.textContent = "";
      schedule.removeAttribute("aria-invalid");
      timezone.removeAttribute("aria-invalid");
      form.querySelector('[data-error-for="timezone"]').textContent = "";
      clear(previewList);
      if (!answer.fires.length) previewList.append(h("li", { class: "muted", text: "It will not fire again." }));
      for (const fire of answer.fires) {
        previewList.append(h("li", {},
          h("span", { text: when(fire.at, answer.timezone) }),
          answer.timezone !== browserZone ? h("span", { class: "muted", text: ` · ${when(fire.at)}` }) : null,
          fire.note ? h("div", { class: "dst", text: fire.note }) : null));
      }
    } catch (exc) {
      if (seq !== previewSeq || !(exc instanceof ApiError)) return;
      clear(previewList).append(h("li", { class: "muted", text: "No preview: fix the schedule." }));
      for (const { field, reason } of exc.fields) {
        const target = form.querySelector(`[data-error-for="${CSS.escape(field)}"]`);
        if (target) {
          target.textContent = reason;
          inputs[field].setAttribute("aria-invalid", "true");
        }
      }
    }
  }
  const schedulePreview = () => {
    clearTimeout(previewTimer);
    previewTimer = setTimeout(refreshPreview, 250);
  };
  if (me.features.preview) {
    for (const input of [schedule, timezone, inputs.anchor]) input.addEventListener("input", schedulePreview);
    refreshPreview();
  } else {
    previewList.append(h("li", { class: "muted", text: "This server has no schedule preview." }));
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors();
    const button = form.querySelector('button[type="submit"]');
    button.disabled = true;
    try {
      let saved;
      if (mode === "edit") {
        saved = await api("PATCH", `/v1/jobs/${id}`, { body: body(), headers: { "If-Match": `"${revision}"` } });
      } else {
        saved = await api("POST", "/v1/jobs", { body: body() });
      }
      say(`${saved.name} saved (revision ${saved.revision}).`);
      location.hash = `#/jobs/${saved.id}`;
    } catch (exc) {
      if (!(exc instanceof ApiError)) {
        formError.textContent = `Not saved: ${exc.message}`;
      } else if (exc.status === 409) {
        conflict();
      } else {
        showErrors(exc.fields, `Not saved: ${exc.message}`);
      }
    } finally {
      button.disabled = false;
    }
  });

  async function conflict() {
    const current = await api("GET", `/v1/jobs/${id}`);
    clear(formError).append(
      h("p", { text: `Not saved: someone changed this job while you edited it (you started from revision ${revision}; it is now at revision ${current.revision}). Your edits are still in the form.` }),
      h("div", { class: "actions" },
        h("button", { type: "button", text: "Save mine over theirs", onclick: () => {
          revision = current.revision;
          formError.textContent = "";
          form.requestSubmit();
        } }),
        h("a", { href: `#/jobs/${id}`, text: "Discard mine and see theirs" })));
    formError.focus?.();
  }
  formError.tabIndex = -1;
  append(ctx.root, []);
}
