// Sluice console: enhancements only; every page works without this file.
// - Pages that carry [data-refresh] reload their meters every N seconds
//   (fetching the same page and swapping <main>), unless a form field has
//   the focus, so the bars move without a manual reload.
(function () {
  "use strict";
  var live = document.querySelector("[data-refresh]");
  if (!live) return;
  var secs = parseInt(live.getAttribute("data-refresh"), 10);
  if (!(secs >= 5)) return;
  live.hidden = false;
  function busy() {
    var a = document.activeElement;
    return a && /^(INPUT|SELECT|TEXTAREA|BUTTON)$/.test(a.tagName);
  }
  function refresh() {
    if (document.hidden || busy()) return;
    fetch(window.location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (!html) return;
        var doc = new DOMParser().parseFromString(html, "text/html");
        var fresh = doc.querySelector("main");
        var main = document.querySelector("main");
        if (fresh && main) {
          main.innerHTML = fresh.innerHTML;
          var l = document.querySelector("[data-refresh]");
          if (l) l.hidden = false;
        }
      })
      .catch(function () {});
  }
  window.setInterval(refresh, secs * 1000);
})();
