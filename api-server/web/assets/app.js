// Appstrate dashboard: progressive enhancement only. Every page works without this file; with it, the
// context switcher submits on change and a run page follows its run live over server-sent events.
(function () {
  "use strict";

  // Organization / application switcher: submit the form when a choice changes.
  document.querySelectorAll("form[data-autosubmit]").forEach(function (form) {
    form.querySelectorAll("select").forEach(function (select) {
      select.addEventListener("change", function () { form.requestSubmit(); });
    });
    var button = form.querySelector("button[data-js-hide]");
    if (button) { button.hidden = true; }
  });

  // The connect page: go on to the provider at once (the link stays for a browser without script).
  var follow = document.querySelector("a[data-follow]");
  if (follow) { window.location.assign(follow.href); }

  // Live run logs over the existing SSE stream (no polling).
  var logs = document.querySelector("ol.logs[data-stream]");
  if (!logs || typeof EventSource === "undefined") { return; }
  var status = document.getElementById("run-status");
  var duration = document.getElementById("run-duration");
  var live = document.getElementById("live-state");
  var seen = {};
  logs.querySelectorAll("li[data-id]").forEach(function (li) { seen[li.getAttribute("data-id")] = true; });

  function addLog(log) {
    if (log.id && seen[log.id]) { return; }
    if (log.id) { seen[log.id] = true; }
    var li = document.createElement("li");
    li.className = "level-" + (log.level || "info");
    if (log.id) { li.setAttribute("data-id", log.id); }
    var lvl = document.createElement("span");
    lvl.className = "lvl";
    lvl.textContent = (log.level || "info");
    li.appendChild(lvl);
    li.appendChild(document.createTextNode(log.message || log.event || log.type || ""));
    var empty = logs.querySelector("li.empty");
    if (empty) { empty.remove(); }
    logs.appendChild(li);
    logs.scrollTop = logs.scrollHeight;
  }

  function finish() {
    source.close();
    var cancel = document.getElementById("cancel");
    if (cancel) { cancel.closest("form").hidden = true; }
    if (live) { live.textContent = "Run finished."; }
    var target = document.getElementById("run-result");
    if (!target) { return; }
    fetch(target.getAttribute("data-src"), { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (html) {
        var doc = new DOMParser().parseFromString(html, "text/html");
        var fresh = doc.getElementById("run-result");
        if (fresh) { target.replaceWith(fresh); }
      })
      .catch(function () { if (live) { live.textContent = "Run finished: reload the page to see the result."; } });
  }

  var source = new EventSource(logs.getAttribute("data-stream"));
  if (live) { live.textContent = "Following the run live…"; }
  source.addEventListener("run_log", function (e) { addLog(JSON.parse(e.data)); });
  source.addEventListener("run_update", function (e) {
    var run = JSON.parse(e.data);
    if (status && run.status) {
      status.textContent = run.status;
      status.className = "badge status-" + run.status;
    }
    if (duration && run.duration != null) { duration.textContent = run.duration + " ms"; }
    if (["success", "failed", "timeout", "cancelled"].indexOf(run.status) >= 0) { finish(); }
  });
  source.onerror = function () {
    if (source.readyState === EventSource.CLOSED && live) { live.textContent = "Live updates stopped."; }
  };
})();
