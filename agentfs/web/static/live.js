// Live pages: reload when the journal records a change this page shows.
// The server sends a "change" event (server-sent events, driven by the journal
// tail); a page with a half-typed form shows a notice instead of reloading.
(function () {
  "use strict";
  var url = document.body.getAttribute("data-live");
  if (!url || !window.EventSource) { return; }
  var events = new EventSource(url);
  events.addEventListener("change", function () {
    var typing = Array.prototype.some.call(document.querySelectorAll("input[type=text]"), function (i) {
      return i.value !== i.defaultValue;
    });
    if (typing) {
      var note = document.getElementById("live-notice");
      if (note) { note.hidden = false; }
      return;
    }
    events.close();
    window.location.reload();
  });
})();
