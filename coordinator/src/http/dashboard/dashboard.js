// Outpost dashboard: live updates. Every few seconds (the body's data-refresh-secs) the page
// is fetched again with the session cookie and its <main> swapped in place. If the session
// has ended (the fetch lands on the sign-in page) or the coordinator cannot be reached, the
// header says so and the page stops refreshing until it is reloaded. No other behaviour: the
// pages work without this script, just without live updates.
(function () {
  "use strict";
  var live = document.getElementById("live");
  var secs = parseInt(document.body.getAttribute("data-refresh-secs") || "5", 10);
  if (!live || !(secs > 0)) return;
  var failures = 0;

  function say(text, stale) {
    live.textContent = text;
    live.classList.toggle("stale", !!stale);
  }

  function refresh() {
    if (document.hidden) return schedule();
    fetch(window.location.href, { credentials: "same-origin", headers: { "X-Requested-With": "outpost-dashboard" } })
      .then(function (response) {
        if (response.redirected && response.url.indexOf("/ui/login") !== -1) {
          say("signed out: reload to sign in", true);
          return null;
        }
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.text();
      })
      .then(function (text) {
        if (text === null) return;
        var doc = new DOMParser().parseFromString(text, "text/html");
        var fresh = doc.getElementById("main");
        var main = document.getElementById("main");
        if (fresh && main) {
          main.innerHTML = fresh.innerHTML;
          main.setAttribute("data-rendered-ms", fresh.getAttribute("data-rendered-ms") || "");
        }
        var stamp = new Date();
        live.setAttribute("data-updated-ms", String(stamp.getTime()));
        say("live · " + stamp.toISOString().replace("T", " ").slice(0, 19) + "Z", false);
        failures = 0;
        schedule();
      })
      .catch(function (err) {
        failures += 1;
        say("not updating (" + err.message + "); retrying", true);
        schedule();
      });
  }

  function schedule() {
    window.setTimeout(refresh, secs * 1000 * Math.min(1 + failures, 6));
  }

  schedule();
})();
