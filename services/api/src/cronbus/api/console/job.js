// A job: its definition, next fires, run history with charts, and the actions its role allows.

import { ApiError, api, withQuery } from "./api.js";
import { may, me } from "./app.js";
import { barChart, rateRing } from "./chart.js";
import { ago, append, browserZone, bytes, clear, confirmDialog, h, ms, say, statusBadge, when } from "./dom.js";

const CHART_RUNS = 50;
const FINISHED = new Set(["succeeded", "failed", "timed_out", "cancelled", "lost", "skipped"]);

export async function jobPage(ctx, id) {
  let job = await api("GET", `/v1/jobs/${id}`, { signal: ctx.signal });
  document.title = `${job.name} · cronbus`;
  const head = h("div", { class: "title" });
  const definition = h("section", { class: "card", "aria-labelledby": "def-title" });
  const fires = h("section", { class: "card", "aria-labelledby": "fires-title" });
  const charts = h("section", { class: "card charts", "aria-labelledby": "charts-title" });
  const runsBody = h("tbody");
  const pager = h("p", { class: "pager" });
  append(ctx.root, [head, h("div", { class: "columns" }, definition, fires), charts,
    h("section", { "aria-labelledby": "runs-title" },
      h("h2", { id: "runs-title", text: "Runs" }),
      h("div", { class: "scroll" }, h("table", {},
        h("thead", {}, h("tr", {}, ["Run", "Status", "Slot", "Trigger", "Lateness", "Duration", "Runner", "Attempts"].map((t) => h("th", { scope: "col", text: t })))),
        runsBody)), pager),
    me.features.slots ? slotsSection() : null]);

  // "Why didn't it run?": every slot of a range and what became of it; backfill for operators.
  function slotsSection() {
    const now = new Date();
    const iso = (d) => d.toISOString().replace(/\.\d{3}Z$/, "Z");
    const since = Math.max(now - 3600e3, new Date(job.created_at).getTime());
    const from = h("input", { id: "slots-from", value: iso(new Date(since)) });
    const to = h("input", { id: "slots-to", value: iso(now) });
    const out = h("div", { "aria-live": "polite" });
    const range = () => ({ from: from.value.trim(), to: to.value.trim() });
    const form = h("form", { class: "filters", "aria-label": "Slots in a range" },
      h("div", { class: "field" }, h("label", { for: "slots-from", text: "From" }), from),
      h("div", { class: "field" }, h("label", { for: "slots-to", text: "To (excluded)" }), to),
      h("button", { type: "submit", text: "Show slots" }),
      may("operator") && me.features.backfill
        ? h("button", { type: "button", class: "danger", text: "Backfill this range", onclick: backfill })
        : null);
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      try {
        const answer = await api("GET", withQuery(`/v1/jobs/${id}/slots`, range()));
        const counts = {};
        for (const slot of answer.items) counts[slot.outcome] = (counts[slot.outcome] || 0) + 1;
        clear(out).append(answer.items.length
          ? h("div", { class: "scroll" }, h("p", { text: Object.entries(counts).map(([k, n]) => `${n} ${k}`).join(", ") }), h("table", {},
            h("thead", {}, h("tr", {}, ["Slot", "Outcome", "Run", "Why"].map((t) => h("th", { scope: "col", text: t })))),
            h("tbody", {}, answer.items.map((slot) => h("tr", {},
              h("td", { text: when(slot.slot, job.timezone) }),
              h("td", {}, h("span", { class: `badge o-${slot.outcome}`, text: slot.outcome })),
              h("td", {}, slot.run_id ? [h("a", { href: `#/runs/${slot.run_id}`, text: slot.run_id.slice(0, 8) }), " ", statusBadge(slot.status)] : "—"),
              h("td", { text: slot.reason || (slot.gap ? `no scheduler was leading from ${when(slot.gap.from)} to ${slot.gap.to ? when(slot.gap.to) : "now"}` : "") }))))))
          : h("p", { class: "muted", text: "The schedule has no slot in this range." }));
      } catch (exc) {
        clear(out).append(h("p", { class: "field-error", role: "alert", text: problemText(exc) }));
      }
    });
    async function backfill() {
      const { from: f, to: t } = range();
      if (!(await confirmDialog(`Run every slot of ${job.name} from ${f} to ${t} that has not run yet?`, "Backfill"))) return;
      try {
        const answer = await api("POST", `/v1/jobs/${id}/backfill`, { body: range() });
        say(`${answer.slots} slots: ${answer.dispatched.length} dispatched now, ${answer.already.length} had run already.`);
        form.requestSubmit();
      } catch (exc) {
        clear(out).append(h("p", { class: "field-error", role: "alert", text: problemText(exc) }));
      }
    }
    return h("section", { "aria-labelledby": "slots-title" },
      h("h2", { id: "slots-title", text: "Why didn't it run? Slots in a range" }), form, out);
  }

  function problemText(exc) {
    return exc instanceof ApiError && exc.fields.length ? exc.fields.map((f) => `${f.field}: ${f.reason}`).join("; ") : exc.message;
  }

  function drawHead() {
    clear(head).append(
      h("h1", {}, job.name, " ", h("span", { class: `state st-${job.state}`, text: job.state })),
      h("div", { class: "actions" },
        may("operator") ? h("button", { type: "button", id: "run-now", text: "Run now", onclick: runNow }) : null,
        may("operator") ? h("button", { type: "button", id: "pause", "aria-pressed": String(job.paused), text: job.paused ? "Resume" : "Pause", onclick: togglePause }) : null,
        may("admin") ? h("a", { class: "button", href: `#/jobs/${id}/edit`, text: "Edit" }) : null,
        may("admin") ? h("a", { class: "button", href: `#/jobs/${id}/clone`, text: "Clone" }) : null,
        may("admin") ? h("button", { type: "button", class: "danger", text: "Delete", onclick: remove }) : null));
    const ex = job.executor;
    const row = (k, v) => [h("dt", { text: k }), h("dd", {}, v ?? "—")];
    clear(definition).append(h("h2", { id: "def-title", text: "Definition" }), h("dl", {},
      row("Schedule", h("code", { text: job.schedule })), row("Time zone", job.timezone), row("Pool", job.pool),
      row("Executor", ex.type === "shell" ? h("code", { text: Array.isArray(ex.command) ? JSON.stringify(ex.command) : ex.command }) : `${ex.method} ${ex.url}`),
      row("Timeout", job.timeout), row("Overlap", job.overlap), row("Catch-up", `${job.catchup.policy} within ${job.catchup.window}`),
      row("Retries", `${job.retries.max_attempts} attempt(s), backoff ${job.retries.backoff} ×${job.retries.multiplier} up to ${job.retries.max_backoff}`),
      row("Jitter", job.jitter), row("Start / end", `${job.start_at ? when(job.start_at) : "—"} / ${job.end_at ? when(job.end_at) : "—"}`),
      row("Labels", Object.entries(job.labels).map(([k, v]) => h("span", { class: "label", text: `${k}=${v}` }))),
      row("Retention", `${job.retention.runs ?? "default"} runs, ${job.retention.log_bytes === null ? "default" : bytes(job.retention.log_bytes)} of output`),
      row("Description", job.description || null),
      row("Revision", `${job.revision}, changed ${ago(job.updated_at)}`)));
    clear(fires).append(h("h2", { id: "fires-title", text: "Next fires" }),
      job.next_fires.length
        ? h("ol", { class: "preview" }, job.next_fires.map((f) => h("li", {}, h("span", { text: when(f, job.timezone) }),
          job.timezone !== browserZone ? h("span", { class: "muted", text: ` · ${when(f)}` }) : null)))
        : h("p", { class: "muted", text: job.paused ? "Paused: it will not fire." : "It will not fire again." }));
  }

  async function runNow() {
    try {
      const run = await api("POST", `/v1/jobs/${id}/runs`, { headers: { "Idempotency-Key": crypto.randomUUID() } });
      say("Run dispatched; opening it once the history has it…");
      // The history records a run a moment after its dispatch: wait for it in the job's list
      // (asking for the run itself before then would be a 404).
      const deadline = Date.now() + 30000;
      while (Date.now() < deadline && !ctx.signal.aborted) {
        const page = await api("GET", withQuery(`/v1/jobs/${id}/runs`, { limit: 20 }), { signal: ctx.signal });
        if (page.items.some((r) => r.id === run.id)) break;
        await new Promise((resolve) => setTimeout(resolve, 250));
      }
      if (!ctx.signal.aborted) location.hash = `#/runs/${run.id}`;
    } catch (exc) {
      say(exc.message, "error");
    }
  }

  async function togglePause() {
    try {
      job = await api("POST", `/v1/jobs/${id}/${job.paused ? "resume" : "pause"}`);
      say(job.paused ? "Paused." : "Resumed.");
      drawHead();
      document.getElementById("pause").focus();
    } catch (exc) {
      say(exc.message, "error");
    }
  }

  async function remove() {
    if (!(await confirmDialog(`Delete ${job.name}? Its schedule stops; its runs stay in the history.`, "Delete"))) return;
    try {
      await api("DELETE", `/v1/jobs/${id}`, { headers: { "If-Match": `"${job.revision}"` } });
      say(`${job.name} deleted.`);
      location.hash = "#/";
    } catch (exc) {
      say(exc.message, "error");
    }
  }

  const cursors = [null];
  let index = 0;
  async function loadRuns(at) {
    index = at;
    const page = await api("GET", withQuery(`/v1/jobs/${id}/runs`, { limit: 20, cursor: cursors[at] }), { signal: ctx.signal });
    cursors[at + 1] = page.next;
    clear(runsBody);
    if (!page.items.length) runsBody.append(h("tr", {}, h("td", { colspan: 8, class: "muted", text: "No runs yet." })));
    for (const run of page.items) {
      runsBody.append(h("tr", {},
        h("td", {}, h("a", { href: `#/runs/${run.id}`, text: run.id.slice(0, 8) })),
        h("td", {}, statusBadge(run.status)),
        h("td", { title: run.slot, text: when(run.slot, job.timezone) }),
        h("td", { text: run.trigger }),
        h("td", { text: ms(run.lateness_ms) }),
        h("td", { text: ms(run.duration_ms) }),
        h("td", { text: run.runner || "—" }),
        h("td", { text: String(run.attempt) })));
    }
    clear(pager).append(
      h("button", { type: "button", disabled: at === 0, onclick: () => loadRuns(at - 1), text: "← Newer" }),
      h("button", { type: "button", disabled: !page.next, onclick: () => loadRuns(at + 1), text: "Older →" }));
  }

  async function drawCharts() {
    const page = await api("GET", withQuery(`/v1/jobs/${id}/runs`, { limit: CHART_RUNS }), { signal: ctx.signal });
    const runs = page.items.filter((r) => FINISHED.has(r.status)).reverse();
    const ok = runs.filter((r) => r.status === "succeeded").length;
    const counted = runs.filter((r) => r.status !== "skipped").length;
    const classOf = (i) => `b-${runs[i].status}`;
    clear(charts).append(h("h2", { id: "charts-title", text: `Last ${runs.length} finished runs` }),
      h("div", { class: "chart-row" },
        h("figure", {}, barChart("Duration", runs.map((r) => r.duration_ms), { format: ms, classOf }), h("figcaption", { text: "Duration" })),
        h("figure", {}, barChart("Lateness", runs.map((r) => r.lateness_ms), { format: ms, classOf }), h("figcaption", { text: "Lateness (start after slot)" })),
        h("figure", {}, rateRing("Success rate", ok, counted), h("figcaption", { text: `Success rate: ${ok} of ${counted}` }))));
  }

  drawHead();
  await Promise.all([loadRuns(0), drawCharts()]);
  ctx.every(2000, async () => {
    try {
      const seen = `${job.revision} ${job.state} ${job.paused}`;
      job = await api("GET", `/v1/jobs/${id}`, { signal: ctx.signal });
      if (`${job.revision} ${job.state} ${job.paused}` !== seen) drawHead();
      await Promise.all([loadRuns(index), drawCharts()]);
    } catch {
      // the next tick tries again; a revoked key signs out through the api hook
    }
  });
}
