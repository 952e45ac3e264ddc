// Eddy's chat page: the tutorial's page, made safe and pleasant.
//
// - The socket URL comes from where the page was served (wss: under https),
//   never a hard-coded host. The room comes from the page's path: `/` is
//   the default room (lobby), `/r/<room>` is that room.
// - Messages are parsed with JSON.parse, never eval, and every string from
//   the server (lines, names, room names) is shown with textContent, never
//   innerHTML: a line is text, whatever it contains.
// - When the connection drops, the page says so and reconnects by itself,
//   waiting longer after each failure (exponential backoff with jitter,
//   capped), so a restarted server is not stampeded by every open tab.
// - It resumes where it left off: the server numbers the room's lines
//   (seq) within a run of its history (epoch), and the page reconnects
//   with the last seq it showed, so the lines sent while it was away
//   arrive once, in order; and with the welcome's resume token, so that it
//   gets its id and name back. A newcomer's replay of earlier lines goes
//   under a divider.
// - Names are labels, not accounts: the id is the identity. A name shared
//   by two members, or one that could pass for the page's own "you" mark,
//   is shown with its id beside it.
// - What the user types is sent as typed: the server reads `/me`, `/nick`
//   and `/who` itself.
"use strict";

(function () {
  var RETRY_FIRST_MS = 250;   // first wait after a drop
  var RETRY_MAX_MS = 5000;    // the cap on any wait

  // The server's rules, checked here first: a room or name it would refuse
  // fails the handshake with 400, and a browser sees only a socket that
  // closed, so the page would retry a refused request for ever.
  var DEFAULT_ROOM = "lobby";
  var ROOM_PATH = "/r/";
  var ROOM_MAX_CHARS = 64;
  // Letters and digits of any script, as Rust's char::is_alphanumeric
  // (Alphabetic or Numeric), which the server uses.
  var ROOM_CHARS = /^[\p{Alphabetic}\p{N}._-]+$/u;
  var NAME_MAX_CHARS = 32;
  var NAME_FORBIDDEN = /[\p{Cc}\p{Cf}\p{Zl}\p{Zp}]/u;  // control, format, line breaks
  // Something that shows: not white space, nor one of the letters and
  // symbols that render blank (the server's list).
  var NAME_VISIBLE = /[^\p{White_Space}\u034F\u115F\u1160\u2800\u3164\uFFA0]/u;
  var NAME_KEY = "eddy.name";                         // in localStorage
  // The reason of the close (code 1000) that ends a connection whose
  // resume token a newer one presented.
  var REPLACED_REASON = "replaced by a newer connection";

  var table = document.getElementById("message");
  var log = document.getElementById("log");
  var form = document.getElementById("send-form");
  var input = document.getElementById("chat");
  var sendButton = document.getElementById("send");
  var statusLine = document.getElementById("status");   // announced: state changes only
  var retryHint = document.getElementById("retry");     // not announced: the countdown
  var roomLabel = document.getElementById("room");
  var countLabel = document.getElementById("count");
  var people = document.getElementById("people");
  var memberList = document.getElementById("members");
  var nameForm = document.getElementById("name-form");
  var nameInput = document.getElementById("name");
  var nameNote = document.getElementById("name-note");
  var roomForm = document.getElementById("room-form");
  var roomInput = document.getElementById("room-name");
  var roomNote = document.getElementById("room-note");

  var socket = null;
  var failures = 0;           // failed or short-lived connections in a row
  var opened = false;         // this socket's handshake succeeded
  var welcomed = false;       // this socket has had its welcome

  // Where we are: the room this page is for (null: the default room, and
  // no `room` in the socket's query, exactly as the tutorial's page), and
  // its canonical name once a welcome has given it.
  var room = null;
  var roomName = null;

  // Who we are. The server gives each connection a new id, unless a resume
  // token gets the old one back, so after a reconnect our earlier lines may
  // carry an earlier id: remember them all. Ids are only unique within a
  // run of the server, so a new epoch (a restart) forgets the old ones:
  // someone else may have them now.
  var myId = null;            // this connection's, once welcomed
  var myIds = {};             // every id this tab has had in this epoch
  var myName = null;          // the name the server knows us by, if any
  var resumeToken = null;     // the last welcome's: in memory only, this tab's own

  // The name we want: the field's, remembered in localStorage. It goes in
  // the socket's query at connect, and as `/nick` when it changes.
  var wantedName = "";
  var nickAsked = null;       // the `/nick` sent on this connection, not yet confirmed
  // A name whose handshake failed: perhaps the server refused it (it says
  // why only to a `/nick`), perhaps the server was down. Until a `/nick`
  // with it succeeds, we connect without it and ask with `/nick` instead.
  // A name the server has taken before is not suspected: its rules do not
  // change, so that failure was the server's being away (a restart).
  var suspectName = null;
  var acceptedNames = new Set();

  // Who is here: `count`, and while the room is small enough for the
  // server to list them, the members (id -> name or null), kept current
  // from join, leave and nick notices. null: not known, the list is hidden.
  var count = null;
  var members = null;

  // Every name seen in this epoch, with the ids that carried it, and the
  // cells that show it, so that a name that turns out to be shared can be
  // shown with its id everywhere, earlier lines included.
  var idsByName = new Map();
  var cellsByName = new Map();

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

  // Room and name rules --------------------------------------------------

  // Why `name` is not a room name, or null if it is one.
  function roomProblem(name) {
    var length = Array.from(name).length;
    if (length === 0) return "a room name needs at least one character";
    if (length > ROOM_MAX_CHARS) return "a room name has at most " + ROOM_MAX_CHARS + " characters";
    if (!ROOM_CHARS.test(name)) return "a room name has only letters, digits, “-”, “_” and “.”";
    // Valid rooms, but no link can name them: browsers read /r/. and
    // /r/.. (even percent-encoded) as the directory and its parent.
    if (name === "." || name === "..") return "“.” and “..” cannot be linked to";
    return null;
  }

  // The room named by the page's path: { room: null } for the default
  // room, { room: NAME }, or { problem: WHY, raw: WHAT WAS THERE }.
  function roomFromPath(path) {
    if (path.indexOf(ROOM_PATH) !== 0) return { room: null };
    var raw = path.slice(ROOM_PATH.length);
    var name;
    try {
      name = decodeURIComponent(raw);
    } catch (e) {
      return { problem: "the link is not properly encoded", raw: raw };
    }
    var problem = roomProblem(name);
    return problem ? { problem: problem, raw: name } : { room: name };
  }

  // A name as the server would take it: { name } (trimmed; "" for none),
  // or { problem }. Forbidden characters are looked for before trimming,
  // as JavaScript's trim removes a few the server's would not.
  function checkName(raw) {
    if (NAME_FORBIDDEN.test(raw)) {
      return { problem: "A name cannot hold control, formatting or line-break characters." };
    }
    var name = raw.trim();
    if (name === "") return { name: "" };
    if (Array.from(name).length > NAME_MAX_CHARS) {
      return { problem: "A name has at most " + NAME_MAX_CHARS + " characters." };
    }
    if (!NAME_VISIBLE.test(name)) return { problem: "A name needs a visible character." };
    return { name: name };
  }

  // localStorage can be missing or refuse (private modes, full disks): the
  // name then lasts as long as the tab.
  function loadName() {
    try { return localStorage.getItem(NAME_KEY) || ""; } catch (e) { return ""; }
  }

  function storeName(name) {
    try {
      if (name === "") localStorage.removeItem(NAME_KEY);
      else localStorage.setItem(NAME_KEY, name);
    } catch (e) { /* kept in memory only */ }
  }

  // History position -------------------------------------------------------

  // The position to resume from. A newcomer's replay is context, not
  // lines it missed: if the connection drops before the replay is done
  // (or the server replays nothing, --replay 0), resuming from the head it
  // joined at keeps the server from sending the whole history instead.
  function resumeFrom() {
    return Math.max(lastSeq, joinedAt);
  }

  // The socket's URL: the room, the name, and on a reconnect where we
  // were (since/epoch) and who we were (resume). URLSearchParams encodes
  // each value, so a name is never read as more of the query.
  function socketUrl(name) {
    var scheme = location.protocol === "https:" ? "wss:" : "ws:";
    var query = new URLSearchParams();
    if (room !== null) query.set("room", room);
    if (name !== "") query.set("name", name);
    if (epoch !== null) {
      query.set("since", String(resumeFrom()));
      query.set("epoch", epoch);
    }
    if (resumeToken !== null) query.set("resume", resumeToken);
    var search = query.toString();
    return scheme + "//" + location.host + "/soc" + (search ? "?" + search : "");
  }

  // A new run of the history (the server restarted, or lost it): seqs and
  // ids from before mean nothing now.
  function startEpoch(name) {
    epoch = name;
    lastSeq = 0;
    joinedAt = 0;
    myIds = {};
    if (myId !== null) myIds[myId] = true;
    idsByName = new Map();
    cellsByName = new Map();
  }

  // After a welcome without a resume, or after a reset, the server sends
  // what a newcomer gets: the last lines up to the welcome's head, then
  // live ones.
  function asNewcomer() {
    joinedAt = welcomeHead;
  }

  // Labels -------------------------------------------------------------------

  // How many people carry `name`: its ids, all of this tab's counting as one.
  function carriers(name) {
    var ids = idsByName.get(name);
    if (!ids) return 0;
    var others = 0;
    var me = 0;
    ids.forEach(function (id) {
      if (myIds[id] === true) me = 1;
      else others += 1;
    });
    return others + me;
  }

  // Whether `name` could pass for a label the page makes itself: our own
  // "you (…)", an anonymous member's id, or a name with its id beside it.
  function mimics(name) {
    return /^\s*you\b/iu.test(name) || /^\s*\p{Nd}+\s*$/u.test(name) ||
      /\(\s*\p{Nd}+\s*\)\s*$/u.test(name);
  }

  // How to show someone: the name, with the id beside it where the name
  // alone could mislead (in quotes where it mimics a label of ours); the
  // id where there is no name; and our own lines marked "you".
  function label(id, name) {
    var mine = myIds[id] === true;
    if (typeof name !== "string") return mine ? "you (" + id + ")" : String(id);
    if (mine) return "you (" + name + ")";
    if (mimics(name)) return "“" + name + "” (" + id + ")";
    if (carriers(name) > 1) return name + " (" + id + ")";
    return name;
  }

  // Records that `id` goes by `name`. If that makes the name shared, every
  // cell showing it is relabelled, earlier lines included.
  function noteName(id, name) {
    if (typeof name !== "string" || typeof id !== "number") return;
    var ids = idsByName.get(name);
    if (!ids) {
      ids = new Set();
      idsByName.set(name, ids);
    }
    if (ids.has(id)) return;
    var before = carriers(name);
    ids.add(id);
    if (before < 2 && carriers(name) > 1) {
      (cellsByName.get(name) || []).forEach(function (entry) {
        entry.cell.textContent = label(entry.id, name);
      });
      showPresence();
    }
  }

  // Keeps `cell` (showing `id` by `name`) for relabelling.
  function keepCell(cell, id, name) {
    var cells = cellsByName.get(name);
    if (!cells) {
      cells = [];
      cellsByName.set(name, cells);
    }
    cells.push({ cell: cell, id: id });
  }

  // Presence -----------------------------------------------------------------

  function showRoom() {
    var shown = roomName !== null ? roomName : room !== null ? room : DEFAULT_ROOM;
    roomLabel.textContent = shown;
    document.title = shown + " · Eddy chat";
  }

  // The count, and the member list while it is known.
  function showPresence() {
    countLabel.textContent = count === null ? "" : count + " here";
    people.hidden = members === null;
    if (members === null) return;
    var items = [];
    members.forEach(function (name, id) {
      var item = document.createElement("li");
      item.textContent = label(id, name);
      item.title = "id " + id;
      if (myIds[id] === true) item.className = "mine";
      items.push(item);
    });
    memberList.replaceChildren.apply(memberList, items);
  }

  // A presence snapshot (welcome, caught_up, who): the count, and the
  // members if the server listed them all (it lists only small rooms, and
  // `/who` at most 1,000).
  function takeSnapshot(data) {
    if (typeof data.count !== "number") return;
    count = data.count;
    if (Array.isArray(data.members) && data.members.length === count) {
      members = new Map();
      data.members.forEach(function (member) {
        if (!member || typeof member.id !== "number") return;
        var name = typeof member.name === "string" ? member.name : null;
        members.set(member.id, name);
        noteName(member.id, name);
      });
    } else {
      members = null;
    }
    showPresence();
  }

  // A join, leave or nick notice: one change to the list. If the count
  // it carries disagrees with the list, a change went unannounced (a big
  // room): the list is hidden until the next snapshot.
  function notePresence(data) {
    var id = data.id;
    var name = typeof data.name === "string" ? data.name : null;
    noteName(id, name);
    if (members !== null && typeof id === "number") {
      if (data.event === "join") members.set(id, name);
      else if (data.event === "leave") members.delete(id);
      else if (data.event === "nick" && members.has(id)) members.set(id, name);
      if (typeof data.count === "number" && data.count !== members.size) members = null;
    }
    if (typeof data.count === "number") count = data.count;
    if (data.event === "nick" && myIds[id] === true && name !== null) {
      // Our new name, whether from the name field or a `/nick` typed in
      // the message box: the field and the stored name follow it.
      myName = name;
      acceptedNames.add(name);
      nickAsked = null;
      if (suspectName === name) suspectName = null;
      wantedName = name;
      storeName(name);
      if (document.activeElement !== nameInput) nameInput.value = name;
    }
    showPresence();
  }

  // Asks the server for the wanted name, once per connection and name.
  function requestNick() {
    if (!welcomed || wantedName === "" || wantedName === myName || wantedName === nickAsked) return;
    nickAsked = wantedName;
    socket.send("/nick " + wantedName);
  }

  // The log ------------------------------------------------------------------

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

  // Adds a row; returns its cells.
  function addRow(className, cells) {
    var follow = isAtBottom();
    var row = table.insertRow();
    if (className) row.className = className;
    var made = cells.map(function (spec) {
      var cell = row.insertCell();
      cell.className = spec.className;
      if (spec.colSpan) cell.colSpan = spec.colSpan;
      if (spec.title) cell.title = spec.title;
      cell.dir = "auto";  // right-to-left lines read right to left
      cell.textContent = spec.text;
      return cell;
    });
    if (follow) log.scrollTop = log.scrollHeight;
    return made;
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

  // A welcome: who we are in this room, and where its history stands.
  function welcome(data) {
    myId = data.id;
    welcomed = true;
    nickAsked = null;
    failures = 0;   // a welcome proves the server usable: the backoff starts over
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
    resumeToken = typeof data.resume === "string" ? data.resume : null;
    if (typeof data.room === "string") {
      roomName = data.room;
      showRoom();
    }
    myName = typeof data.name === "string" ? data.name : null;
    if (myName !== null) acceptedNames.add(myName);
    noteName(myId, myName);
    takeSnapshot(data);
    // The name may have changed while we were away, or a resume gave back
    // the one we had: the server learns the one in the field.
    requestNick();
  }

  var show = {
    sys: function (data) {
      var event = typeof data.event === "string" ? data.event : null;
      // The welcome is the one notice with an id and no event.
      if (event === null && typeof data.id === "number") welcome(data);
      switch (event) {
        case "caught_up":
          // Not shown: the reader sees the replay end anyway. It says the
          // server has given us every line up to its head, and who is here.
          if (typeof data.head === "number") lastSeq = Math.max(lastSeq, data.head);
          takeSnapshot(data);
          return;
        case "reset":
          // Our position meant nothing to the server (even in an epoch of
          // the same name): start afresh, and take what follows as a
          // newcomer does. The notice itself is shown, as a gap's is.
          startEpoch(epoch);
          resuming = false;
          asNewcomer();
          break;
        case "join":
        case "leave":
        case "nick":
          notePresence(data);
          break;
        case "who":
          takeSnapshot(data);
          break;
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
      var name = typeof data.name === "string" ? data.name : null;
      noteName(data.id, name);
      var mine = myIds[data.id] === true;
      var text = String(data.message);
      // `/me waves` from alice: "* alice waves".
      var action = data.action === true;
      if (action) text = "* " + (name !== null ? name : String(data.id)) + " " + text;
      var cells = addRow(mine ? "mine" : "", [
        { className: action ? "text action" : "text", text: text },
        { className: "who", text: label(data.id, name), title: "id " + data.id }
      ]);
      if (name !== null) keepCell(cells[1], data.id, name);
    }
  };

  // The connection -----------------------------------------------------------

  function connect() {
    if (failures) {
      retryHint.textContent = "retrying now…";
    } else {
      setStatus("connecting", "connecting…");
    }
    resuming = epoch !== null;
    dividerShown = false;
    opened = false;
    welcomed = false;
    var name = wantedName !== suspectName ? wantedName : "";
    socket = new WebSocket(socketUrl(name));
    socket.onopen = function () {
      opened = true;
      setStatus("open", "connected");
    };
    socket.onmessage = function (event) {
      var data;
      try { data = JSON.parse(event.data); } catch (e) { return; }
      // Unknown types are ignored, so the server can grow.
      if (data && Object.prototype.hasOwnProperty.call(show, data.type)) show[data.type](data);
    };
    socket.onclose = function (event) {
      // A handshake refused (or a server down): if it carried a name, the
      // next attempt goes without, and asks for the name once welcomed.
      if (!opened && name !== "" && !acceptedNames.has(name)) suspectName = name;
      if (event.code === 1000 && event.reason === REPLACED_REASON) {
        // Another connection presented our resume token and took our id.
        // Taking it back would close that one, which would take it back
        // again, for ever: we come back as someone new instead.
        // The id is that connection's now: its lines are not ours.
        resumeToken = null;
        if (myId !== null) delete myIds[myId];
        addNotice("This session was taken over by another connection: you come back as someone new.");
      } else if (myId !== null) {
        // A line in the log marks the break; the lines missed meanwhile
        // come after it once we are back.
        addNotice("connection lost");
      }
      socket = null;
      myId = null;
      welcomed = false;
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

  // The forms ----------------------------------------------------------------

  // Enter in the input and the Send button both submit the form (while
  // disconnected the button is disabled, so neither does anything and the
  // text stays in the input). The text goes as typed: `/me waves`, `/who`
  // and `/nick bob` are the server's to read.
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

  // The name field: checked as the server would, remembered, and sent as
  // `/nick` while connected (at the next connect it goes in the query).
  function applyName() {
    var checked = checkName(nameInput.value);
    if (checked.problem) {
      nameNote.textContent = checked.problem;
      return;
    }
    nameNote.textContent = "";
    nameInput.value = checked.name;
    if (checked.name !== wantedName) {
      wantedName = checked.name;
      storeName(wantedName);
      if (wantedName === "" && myName !== null) {
        nameNote.textContent = "From your next visit, you come without a name.";
      }
    }
    requestNick();
  }

  nameForm.addEventListener("submit", function (event) {
    event.preventDefault();
    applyName();
  });
  nameInput.addEventListener("change", applyName);

  // Another room: its own page, `/r/<room>` (the default room is `/`).
  roomForm.addEventListener("submit", function (event) {
    event.preventDefault();
    var name = roomInput.value.trim();
    var problem = roomProblem(name);
    if (problem) {
      roomNote.textContent = problem.charAt(0).toUpperCase() + problem.slice(1) + ".";
      return;
    }
    roomNote.textContent = "";
    location.assign(name.toLowerCase() === DEFAULT_ROOM ? "/" : ROOM_PATH + encodeURIComponent(name));
  });

  // Start --------------------------------------------------------------------

  var stored = checkName(loadName());
  if (stored.problem) {
    nameInput.value = loadName();
    nameNote.textContent = stored.problem;
  } else {
    wantedName = stored.name;
    nameInput.value = stored.name;
  }

  var where = roomFromPath(location.pathname);
  if (where.problem) {
    // A link to no room the server would open: say so, and offer the
    // room form, rather than retry a handshake that must fail.
    roomLabel.textContent = "";
    setStatus("closed", "not connected");
    addNotice("“" + where.raw + "” is not a room: " + where.problem + ". Choose another room above.");
    roomInput.value = where.raw;
    return;
  }
  room = where.room;
  showRoom();
  connect();
})();
