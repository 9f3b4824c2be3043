// Server-Sent Events read from a fetch Response (EventSource cannot send an Authorization
// header). Calls onEvent({event, data, id}) for each event, in order.

export async function readEvents(response, onEvent) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let event = "message";
  let data = [];
  let id = null;
  const dispatch = () => {
    if (data.length) onEvent({ event, data: data.join("\n"), id });
    else if (event !== "message") onEvent({ event, data: "", id });
    event = "message";
    data = [];
  };
  // A replay arrives faster than it can be shown: reads that are already buffered resolve as
  // microtasks, so yield a task now and then to let the page paint what it has.
  let yielded = performance.now();
  for (;;) {
    if (performance.now() - yielded > 25) {
      await new Promise((resolve) => setTimeout(resolve, 0));
      yielded = performance.now();
    }
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let start = 0;
    for (;;) {
      // indexOf from `start`, not a search on a slice: a 10 MB replay has many lines per read.
      const end = buffer.indexOf("\n", start);
      if (end < 0) break;
      const line = buffer.slice(start, end > start && buffer[end - 1] === "\r" ? end - 1 : end);
      start = end + 1;
      if (line === "") {
        dispatch();
        continue;
      }
      if (line.startsWith(":")) continue; // a comment: keep-alive
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let text = colon < 0 ? "" : line.slice(colon + 1);
      if (text.startsWith(" ")) text = text.slice(1);
      if (field === "data") data.push(text);
      else if (field === "event") event = text;
      else if (field === "id") id = text;
    }
    buffer = buffer.slice(start);
  }
}
