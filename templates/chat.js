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
// - It resumes where it left off: the server numbers the room's lines
//   (seq) within a run of its history (epoch), and the page reconnects
//   with the last seq it showed, so the lines sent while it was away
//   arrive once, in order. A newcomer's replay of earlier lines goes under
//   a divider.
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
  var failures = 0;           // failed or short-lived connections in a row

  // Who we are. The server gives each connection a new id, so after a
  // reconnect our earlier lines carry an earlier id: remember them all.
  // Ids are only unique within a run of the server, so a new epoch (a
  // restart) forgets the old ones: someone else may have them now.
  var myId = null;            // this connection's, once welcomed
  var myIds = {};             // every id this tab has had in this epoch

  // Where we are in the room's history. In memory only: a reload starts
  // afresh, and gets the newcomer's replay.
  var epoch = null;           // the run of the history our seqs belong to
  var lastSeq = 0;            // the last line shown; anything at or below it is a repeat
  var joinedAt = 0;           // the head when we last came as a newcomer

  // This connection's part in the history: did it resume, and the head
  // its welcome gave (a newcomer's lines up to it are replayed, not live).
  var resuming = false;
  var welcomeHead = 0;
  var dividerShown = false;

  // The position to resume from. A newcomer's replay is context, not
  // lines it missed: if the connection drops before the replay is done
  // (or the server replays nothing, --replay 0), resuming from the head it
  // joined at keeps the server from sending the whole history instead.
  function resumeFrom() {
    return Math.max(lastSeq, joinedAt);
  }

  function socketUrl() {
    var scheme = location.protocol === "https:" ? "wss:" : "ws:";
    var url = scheme + "//" + location.host + "/soc";
    if (epoch !== null) {
      url += "?since=" + resumeFrom() + "&epoch=" + encodeURIComponent(epoch);
    }
    return url;
  }

  // A new run of the history (the server restarted, or lost it): seqs and
  // ids from before mean nothing now.
  function startEpoch(name) {
    epoch = name;
    lastSeq = 0;
    joinedAt = 0;
    myIds = {};
    if (myId !== null) myIds[myId] = true;
  }

  // After a welcome without a resume, or after a reset, the server sends
  // what a newcomer gets: the last lines up to the welcome's head, then
  // live ones.
  function asNewcomer() {
    joinedAt = welcomeHead;
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

  function addNotice(text) {
    addRow("", [{ className: "sys", colSpan: 2, text: text }]);
  }

  // The replay is set apart by a row of its own, so that nobody takes
  // lines from before they came for lines said to them. It is text in
  // the log, so a screen reader reads it out before the replayed lines.
  function addDivider() {
    addRow("divider", [{ className: "divider", colSpan: 2, text: "Earlier messages" }]);
    dividerShown = true;
  }

  var show = {
    sys: function (data) {
      // Only the welcome carries an id: the one the server gave us. A
      // welcome also proves the server usable: the backoff starts over.
      if (typeof data.id === "number") {
        myId = data.id;
        failures = 0;
        welcomeHead = typeof data.head === "number" ? data.head : 0;
        if (typeof data.epoch === "string" && data.epoch !== epoch) {
          // Our first welcome, or another run than the one we resumed
          // from (the server restarted): our position means nothing
          // here, and what follows is a newcomer's replay.
          startEpoch(data.epoch);
          resuming = false;
        }
        myIds[myId] = true;
        if (!resuming) asNewcomer();
      }
      if (data.event === "caught_up") {
        // Not shown: the reader sees the replay end anyway. It says the
        // server has given us every line up to its head.
        if (typeof data.head === "number") lastSeq = Math.max(lastSeq, data.head);
        return;
      }
      if (data.event === "reset") {
        // Our position meant nothing to the server (even in an epoch of
        // the same name): start afresh, and take what follows as a
        // newcomer does. The notice itself is shown, as a gap's is.
        startEpoch(epoch);
        resuming = false;
        asNewcomer();
      }
      addNotice(String(data.message));
    },
    user: function (data) {
      var seq = typeof data.seq === "number" ? data.seq : null;
      if (seq !== null) {
        // We resume from past the last line shown, so the server should
        // never send it again; should one come twice anyway, its seq
        // says so, and a line is never shown twice.
        if (seq <= lastSeq) return;
        lastSeq = seq;
        if (!resuming && seq <= welcomeHead && !dividerShown) addDivider();
      }
      var mine = myIds[data.id] === true;
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
    resuming = epoch !== null;
    dividerShown = false;
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
      // A line in the log marks the break; the lines missed meanwhile
      // come after it once we are back.
      if (myId !== null) addNotice("connection lost");
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
