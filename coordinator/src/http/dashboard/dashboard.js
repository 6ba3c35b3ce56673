// Outpost dashboard: live updates. The page listens to /ui/events (Server-Sent Events, with the
// session cookie): on `change` it fetches itself again and swaps its <main> in place; on
// `signed-out` the header says so and updates stop. The browser reconnects a dropped stream by
// itself; while it cannot, the header says "not updating". Where EventSource is missing, the
// page is fetched every data-refresh-secs instead. No other behaviour: the pages work without
// this script, just without live updates.
(function () {
  "use strict";
  var live = document.getElementById("live");
  var secs = parseInt(document.body.getAttribute("data-refresh-secs") || "5", 10);
  if (!live || !(secs > 0)) return;
  var stopped = false;
  var busy = false;

  function say(text, stale) {
    live.textContent = text;
    live.classList.toggle("stale", !!stale);
  }

  function signedOut() {
    stopped = true;
    say("signed out: reload to sign in", true);
  }

  function refresh() {
    if (stopped || busy) return Promise.resolve();
    busy = true;
    return fetch(window.location.href, { credentials: "same-origin", headers: { "X-Requested-With": "outpost-dashboard" } })
      .then(function (response) {
        if (response.redirected && response.url.indexOf("/ui/login") !== -1) {
          signedOut();
          return null;
        }
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.text();
      })
      .then(function (text) {
        busy = false;
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
      })
      .catch(function (err) {
        busy = false;
        say("not updating (" + err.message + "); retrying", true);
      });
  }

  if (!window.EventSource) {
    var poll = function () {
      if (!document.hidden) refresh();
      if (!stopped) window.setTimeout(poll, secs * 1000);
    };
    window.setTimeout(poll, secs * 1000);
    return;
  }

  var source = new EventSource("/ui/events");
  live.setAttribute("data-transport", "sse");
  source.addEventListener("open", function () {
    say("live", false);
  });
  source.addEventListener("change", function () {
    if (!document.hidden) refresh();
  });
  source.addEventListener("signed-out", function () {
    source.close();
    signedOut();
  });
  source.addEventListener("error", function () {
    if (stopped) return;
    if (source.readyState === EventSource.CLOSED) {
      // Refused for good (the session ended, so the stream was sent to sign in): one fetch
      // tells which, and the page keeps what it shows.
      refresh().then(function () {
        if (!stopped) say("not updating: reload the page", true);
      });
    } else {
      say("reconnecting…", true);
    }
  });
})();
