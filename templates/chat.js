// Eddy's chat page: the tutorial's page, made safe and pleasant.
//
// - The socket URL comes from where the page was served (wss: under https),
//   never a hard-coded host.
// - Messages are parsed with JSON.parse, never eval, and every string from
//   the server is shown with textContent, never innerHTML: a line is text,
//   whatever it contains.
// - When the connection drops, the page says so and reconnects by itself,
//   waiting longer after each failure (exponential backoff with jitter,
//   capped), so a restarted server is not stampeded by every open tab.
"use strict";

(function () {
  var RETRY_FIRST_MS = 250;   // first wait after a drop
  var RETRY_MAX_MS = 5000;    // the cap on any wait

  var table = document.getElementById("message");
  var log = document.getElementById("log");
  var form = document.getElementById("send-form");
  var input = document.getElementById("chat");
  var sendButton = document.getElementById("send");
  var statusLine = document.getElementById("status");   // announced: state changes only
  var retryHint = document.getElementById("retry");     // not announced: the countdown

  var socket = null;
  var myId = null;            // told by the welcome; marks our own lines
  var failures = 0;           // failed or short-lived connections in a row

  function socketUrl() {
    var scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return scheme + "//" + location.host + "/soc";
  }

  // The status is a live region: change its text only when the state
  // really changes, or a screen reader repeats it at every retry.
  function setStatus(state, text) {
    statusLine.dataset.state = state;
    if (statusLine.textContent !== text) statusLine.textContent = text;
    sendButton.disabled = state !== "open";
    if (state === "open") retryHint.textContent = "";
  }

  // Follow new lines only if the reader was already at the bottom; someone
  // scrolled up to read history is not yanked away.
  function isAtBottom() {
    return log.scrollHeight - log.scrollTop - log.clientHeight < 8;
  }

  function addRow(className, cells) {
    var follow = isAtBottom();
    var row = table.insertRow();
    if (className) row.className = className;
    cells.forEach(function (spec) {
      var cell = row.insertCell();
      cell.className = spec.className;
      if (spec.colSpan) cell.colSpan = spec.colSpan;
      cell.dir = "auto";  // right-to-left lines read right to left
      cell.textContent = spec.text;
    });
    if (follow) log.scrollTop = log.scrollHeight;
  }

  var show = {
    sys: function (data) {
      // Only the welcome carries an id: the one the server gave us. A
      // welcome also proves the server usable: the backoff starts over.
      if (typeof data.id === "number") {
        myId = data.id;
        failures = 0;
      }
      addRow("", [{ className: "sys", colSpan: 2, text: String(data.message) }]);
    },
    user: function (data) {
      var mine = myId !== null && data.id === myId;
      addRow(mine ? "mine" : "", [
        { className: "text", text: String(data.message) },
        { className: "who", text: mine ? "you (" + data.id + ")" : String(data.id) }
      ]);
    }
  };

  function connect() {
    if (failures) {
      retryHint.textContent = "retrying now…";
    } else {
      setStatus("connecting", "connecting…");
    }
    socket = new WebSocket(socketUrl());
    socket.onopen = function () {
      setStatus("open", "connected");
    };
    socket.onmessage = function (event) {
      var data;
      try { data = JSON.parse(event.data); } catch (e) { return; }
      // Unknown types are ignored, so the server can grow.
      if (data && Object.prototype.hasOwnProperty.call(show, data.type)) show[data.type](data);
    };
    socket.onclose = function () {
      // A line in the log marks the break: ids start afresh after a
      // server restart, and earlier lines belong to the old session.
      if (myId !== null) {
        addRow("", [{ className: "sys", colSpan: 2, text: "connection lost" }]);
      }
      socket = null;
      myId = null;
      retryLater();
    };
  }

  function retryLater() {
    // Wait between half and all of the current ceiling ("equal jitter"),
    // so reconnecting tabs spread out instead of arriving together.
    var ceiling = Math.min(RETRY_MAX_MS, RETRY_FIRST_MS * Math.pow(2, failures));
    var wait = ceiling / 2 + Math.random() * ceiling / 2;
    failures += 1;
    setStatus("closed", "disconnected");
    retryHint.textContent = "retrying in " + Math.max(1, Math.round(wait / 1000)) + " s";
    setTimeout(connect, wait);
  }

  // Enter in the input and the Send button both submit the form (while
  // disconnected the button is disabled, so neither does anything and the
  // text stays in the input).
  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var text = input.value;
    // Blank lines are not sent; and while disconnected, the text stays.
    if (text.trim() !== "" && socket && socket.readyState === WebSocket.OPEN) {
      socket.send(text);
      input.value = "";
    }
    input.focus();
  });

  connect();
})();
