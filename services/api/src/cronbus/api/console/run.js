// A run: its outcome, attempts, resources, and its output — followed live while it runs and
// replayed when it is over, read from the SSE endpoint with fetch (EventSource cannot send
// the Authorization header).

import { ApiError, api } from "./api.js";
import { may } from "./app.js";
import { ago, append, bytes, clear, h, ms, say, statusBadge, when } from "./dom.js";
import { readEvents } from "./sse.js";

const FINISHED = new Set(["succeeded", "failed", "timed_out", "cancelled", "lost", "skipped"]);
const TRUNCATED = "[cronbus: output truncated";

export async function runPage(ctx, id) {
  let run = await api("GET", `/v1/runs/${id}`, { signal: ctx.signal });
  const job = await api("GET", `/v1/jobs/${run.job_id}`, { signal: ctx.signal }).catch(() => null);
  document.title = `Run ${id.slice(0, 8)} · cronbus`;
  const head = h("div", { class: "title" });
  const facts = h("section", { class: "card", "aria-labelledby": "facts-title" });
  const attempts = h("section", { class: "card", "aria-labelledby": "attempts-title" });
  const log = h("div", { id: "log", class: "log", role: "log", tabindex: "0", "aria-label": "Output", "aria-live": "off" });
  const logState = h("span", { id: "log-state", class: "muted", "aria-live": "polite" });
  // Follow the end of a live run; a finished one is read from the top.
  const follow = h("input", { type: "checkbox", id: "follow", checked: !FINISHED.has(run.status) });
  append(ctx.root, [head, h("div", { class: "columns" }, facts, attempts),
    h("section", { "aria-labelledby": "output-title" },
      h("div", { class: "title" }, h("h2", { id: "output-title", text: "Output" }), logState,
        h("label", { class: "inline" }, follow, " follow"),
        h("button", { type: "button", id: "download", text: "Download", onclick: download })),
      h("p", { class: "legend muted" }, h("span", { class: "o-stdout", text: "stdout" }), " ", h("span", { class: "o-stderr", text: "stderr" }), " ", h("span", { class: "o-system", text: "cronbus" })),
      log)]);

  function draw() {
    const running = !FINISHED.has(run.status);
    clear(head).append(
      h("h1", {}, "Run ", h("code", { text: id.slice(0, 8) }), " of ", job ? h("a", { href: `#/jobs/${run.job_id}`, text: job.name }) : run.job_id, " ", statusBadge(run.status)),
      h("div", { class: "actions" },
        may("operator") && running ? h("button", { type: "button", id: "cancel", class: "danger", text: "Cancel run", onclick: cancel }) : null));
    const row = (k, v) => [h("dt", { text: k }), h("dd", {}, v ?? "—")];
    clear(facts).append(h("h2", { id: "facts-title", text: "Run" }), h("dl", {},
      row("Status", statusBadge(run.status)), row("Slot", when(run.slot, job ? job.timezone : undefined)),
      row("Trigger", run.trigger), row("Pool / runner", `${run.pool} / ${run.runner || "—"}`),
      row("Started", run.started_at ? `${when(run.started_at)} (${ago(run.started_at)})` : null),
      row("Lateness", ms(run.lateness_ms)), row("Duration", ms(run.duration_ms)),
      row("Exit code", run.exit_code === null ? null : String(run.exit_code)),
      row("CPU", ms(run.cpu_ms)), row("Peak memory", bytes(run.peak_rss_bytes)),
      row("Output", `${bytes(run.output_bytes)}${run.truncated ? " (truncated)" : ""}`),
      row("Error", run.error)));
    clear(attempts).append(h("h2", { id: "attempts-title", text: "Attempts" }),
      h("table", {}, h("thead", {}, h("tr", {}, ["#", "Status", "Runner", "Exit", "Duration", "Error"].map((t) => h("th", { scope: "col", text: t })))),
        h("tbody", {}, (run.attempts || []).map((a) => h("tr", {},
          h("td", { text: String(a.attempt) }), h("td", {}, statusBadge(a.status)), h("td", { text: a.runner || "—" }),
          h("td", { text: a.exit_code === null ? "—" : String(a.exit_code) }), h("td", { text: ms(a.duration_ms) }), h("td", { text: a.error || "" }))))));
  }

  async function cancel() {
    try {
      await api("POST", `/v1/runs/${id}/cancel`);
      say("Cancel requested.");
    } catch (exc) {
      say(exc.message, "error");
    }
  }

  async function download() {
    try {
      const response = await api("GET", `/v1/runs/${id}/log`, { raw: true, headers: { Accept: "text/plain" } });
      const url = URL.createObjectURL(await response.blob());
      const a = h("a", { href: url, download: `cronbus-run-${id}.log` });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    } catch (exc) {
      say(exc.message, "error");
    }
  }

  // Output arrives in many small events. They are written once per frame, at most FRAME_BYTES
  // a frame so the first screen of a long replay shows at once, into blocks of about
  // BLOCK_BYTES (a new block starts only after a newline) so that layout stays incremental.
  const FRAME_BYTES = 256 * 1024;
  const BLOCK_BYTES = 64 * 1024;
  let pending = [];
  let scheduled = false;
  let attemptShown = null;
  let block = null;
  let blockBytes = 0;
  let endsLine = true;
  function put(node, length) {
    if (!block || (blockBytes >= BLOCK_BYTES && endsLine)) {
      block = h("div", { class: "log-block" });
      log.append(block);
      blockBytes = 0;
    }
    block.append(node);
    blockBytes += length;
  }
  function flush() {
    scheduled = false;
    let budget = FRAME_BYTES;
    let taken = 0;
    while (taken < pending.length && budget > 0) {
      const { event, data, id: eventId } = pending[taken];
      taken += 1;
      const attempt = eventId ? eventId.split(":")[0] : null;
      if (attempt && attempt !== attemptShown) {
        if (attemptShown !== null) put(h("span", { class: "o-attempt", text: `\n— attempt ${attempt} —\n` }), 0);
        attemptShown = attempt;
      }
      const kind = event === "stderr" ? "o-stderr" : event === "system" ? "o-system" : "o-stdout";
      const marker = event === "system" && data.includes(TRUNCATED);
      put(h("span", { class: marker ? `${kind} o-truncated` : kind, text: data }), data.length);
      endsLine = data.endsWith("\n");
      budget -= data.length;
    }
    pending = pending.slice(taken);
    if (follow.checked) log.scrollTop = log.scrollHeight;
    if (pending.length) later();
  }
  function later() {
    if (!scheduled) {
      scheduled = true;
      requestAnimationFrame(flush);
    }
  }

  async function stream() {
    logState.textContent = FINISHED.has(run.status) ? "replaying" : "live";
    const response = await api("GET", `/v1/runs/${id}/log/stream`, { raw: true, signal: ctx.signal, headers: { Accept: "text/event-stream" } });
    await readEvents(response, (event) => {
      if (event.event === "end") return;
      pending.push(event);
      later();
    });
    while (pending.length && !ctx.signal.aborted) await new Promise((resolve) => requestAnimationFrame(resolve));
    logState.textContent = "ended";
  }

  draw();
  const streaming = stream().catch((exc) => {
    if (!ctx.signal.aborted) logState.textContent = exc instanceof ApiError ? exc.message : "the stream broke; reload to resume";
  });
  ctx.every(1000, async () => {
    if (FINISHED.has(run.status)) return;
    try {
      const seen = JSON.stringify(run);
      run = await api("GET", `/v1/runs/${id}`, { signal: ctx.signal });
      if (JSON.stringify(run) !== seen) draw();
    } catch {
      // the next tick tries again
    }
  });
  streaming.then(async () => {
    if (ctx.signal.aborted) return;
    run = await api("GET", `/v1/runs/${id}`, { signal: ctx.signal }).catch(() => run);
    draw();
  });
}
