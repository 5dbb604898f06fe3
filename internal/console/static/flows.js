// Sluice console, flow page: run a flow and watch it. Without this file the
// run form posts and the browser goes to the run's page, which refreshes
// until the run ends. With it, the form posts to the console's own stream
// endpoint (same origin, the session's cookie and CSRF token; never an API
// key) and the answer appears as it is written, with the nodes done.
(function () {
  "use strict";
  var form = document.getElementById("run-form");
  if (!form || !window.fetch || !window.TextDecoder || !window.ReadableStream || !window.URLSearchParams) return;
  var live = document.getElementById("live");
  var bar = document.getElementById("run-progress");
  var status = document.getElementById("run-status");
  var answer = document.getElementById("answer");
  var link = document.getElementById("run-link");
  var button = form.querySelector("button[type=submit]");

  function say(text) { status.textContent = text; }

  function handle(line) {
    if (!line) return;
    var ev;
    try { ev = JSON.parse(line); } catch (e) { return; }
    var d = ev.data || {};
    switch (ev.event) {
      case "started":
        link.querySelector("a").setAttribute("href", d.url);
        link.hidden = false;
        bar.max = Math.max(d.total, 1);
        bar.value = 0;
        live.setAttribute("data-run", d.run_id);
        say("Running: 0 of " + d.total + " nodes done.");
        break;
      case "progress":
        bar.max = Math.max(d.total, 1);
        bar.value = d.done;
        say("Running: " + d.done + " of " + d.total + " nodes done" + (d.node ? "; now " + d.node : "") + ".");
        break;
      case "text":
        if (typeof d.replace === "string") answer.textContent = d.replace;
        if (typeof d.append === "string") answer.textContent += d.append;
        break;
      case "end":
        if (d.status === "succeeded") bar.value = bar.max;
        live.setAttribute("data-status", d.status);
        say("The run " + (d.status_words || d.status) + "." + (d.stopped ? " " + d.stopped : ""));
        break;
      case "error":
        live.setAttribute("data-status", "refused");
        say(d.message || "The run could not start.");
        break;
    }
  }

  form.addEventListener("submit", function (e) {
    e.preventDefault();
    var old = document.getElementById("run-error");
    if (old) old.hidden = true;
    live.hidden = false;
    live.removeAttribute("data-status");
    link.hidden = true;
    answer.textContent = "";
    bar.removeAttribute("value"); // indeterminate until admitted
    say("Waiting for the run to be admitted…");
    button.disabled = true;
    var body = new URLSearchParams(new FormData(form)).toString();
    fetch(form.getAttribute("data-stream"), {
      method: "POST", credentials: "same-origin", body: body,
      headers: { "Content-Type": "application/x-www-form-urlencoded", "Accept": "application/x-ndjson" }
    }).then(function (resp) {
      if ((resp.headers.get("Content-Type") || "").indexOf("application/x-ndjson") !== 0) {
        live.setAttribute("data-status", "refused");
        say("The run was refused (HTTP " + resp.status + "). Reload the page and try again.");
        return;
      }
      var reader = resp.body.getReader();
      var dec = new TextDecoder();
      var buf = "";
      function pump() {
        return reader.read().then(function (r) {
          if (r.done) {
            handle(buf.trim());
            return;
          }
          buf += dec.decode(r.value, { stream: true });
          var lines = buf.split("\n");
          buf = lines.pop();
          lines.forEach(handle);
          return pump();
        });
      }
      return pump();
    }).catch(function () {
      say("The connection was lost. The run goes on: see Your runs.");
    }).then(function () {
      button.disabled = false;
    });
  });
})();
