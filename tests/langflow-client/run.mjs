// Drives LangFlow's JavaScript client (@datastax/langflow-client) against
// a LangFlow API: Sluice's own or Sluice's LangFlow front. It prints one
// JSON object with what the client saw; cmd/sluice's Go tests assert on it.
//
// Environment: LF_URL (base URL), LF_KEY (the caller's Sluice key),
// LF_FLOW (a flow id), LF_ENDPOINT (the flow's endpoint name, optional),
// LF_MISSING (a flow id that does not exist).
import { LangflowClient } from "@datastax/langflow-client";
import { LangflowError } from "@datastax/langflow-client/errors";

const env = (k) => process.env[k] ?? "";
const client = new LangflowClient({ baseUrl: env("LF_URL"), apiKey: env("LF_KEY") });
const out = {};

async function attempt(name, fn) {
  try {
    out[name] = await fn();
  } catch (e) {
    const r = { error: String(e.message) };
    if (e instanceof LangflowError && e.cause) {
      r.status = e.cause.status;
      try {
        r.body = await e.cause.json();
      } catch {
        // not JSON
      }
    }
    out[name] = r;
  }
}

await attempt("byId", async () => {
  const r = await client.flow(env("LF_FLOW")).run("Hello from the JS client");
  return { text: r.chatOutputText(), sessionId: r.sessionId };
});
if (env("LF_ENDPOINT")) {
  await attempt("byEndpoint", async () => {
    const r = await client.flow(env("LF_ENDPOINT")).run("Hello again", { session_id: "js-session" });
    return { text: r.chatOutputText(), sessionId: r.sessionId };
  });
}
await attempt("stream", async () => {
  const events = [];
  let end;
  for await (const ev of await client.flow(env("LF_FLOW")).stream("Stream to the JS client")) {
    events.push(ev.event);
    if (ev.event === "end") end = ev.data.result;
  }
  return { events, endText: end?.outputs?.[0]?.outputs?.[0]?.results?.message?.text };
});
await attempt("upload", async () => {
  const file = new File(["notes for the flow\n"], "notes.txt", { type: "text/plain" });
  const r = await client.flow(env("LF_FLOW")).uploadFile(file);
  return { flowId: r.flowId, filePath: r.filePath };
});
await attempt("missing", async () => {
  await client.flow(env("LF_MISSING")).run("anyone?");
  return { unexpected: "the run of a missing flow succeeded" };
});
await attempt("badKey", async () => {
  const bad = new LangflowClient({ baseUrl: env("LF_URL"), apiKey: "slk_not-a-key" });
  await bad.flow(env("LF_FLOW")).run("let me in");
  return { unexpected: "a bad key was let in" };
});
console.log(JSON.stringify(out));
