// The live page: follows /events (Server-Sent Events) with the page's
// filters and puts each event in the table as text, never as markup.
(function () {
  "use strict";
  var table = document.getElementById("events");
  var body = table.tBodies[0];
  var status = document.getElementById("live-status");
  var q = new URLSearchParams();
  ["agent", "task", "type"].forEach(function (k) {
    var v = table.dataset[k];
    if (v) { q.set(k, v); }
  });
  var maxRows = 500;

  var labels = ["#", "Time", "Type", "Actor", "Subject", "Task", "Outcome"];

  function cell(row, text) {
    var td = row.insertCell();
    td.textContent = text || "";
    td.dataset.label = labels[td.cellIndex];
    return td;
  }

  function show(e) {
    var ev = JSON.parse(e.data);
    var row = body.insertRow(0);
    row.dataset.seq = ev.seq;
    row.className = "event event-" + ev.type;
    cell(row, String(ev.seq));
    cell(row, ev.time.slice(0, 19).replace("T", " ") + " UTC");
    cell(row, ev.type);
    cell(row, ev.actor);
    cell(row, ev.subject);
    cell(row, ev.task);
    cell(row, ev.outcome);
    while (body.rows.length > maxRows) { body.deleteRow(body.rows.length - 1); }
  }

  var source = new EventSource("/events?" + q.toString());
  source.onopen = function () { status.textContent = "Live: new events appear at the top."; };
  source.onerror = function () { status.textContent = "Disconnected; reconnecting…"; };
  source.onmessage = show;
})();
