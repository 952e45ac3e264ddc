//! The chat page, used the way a person uses it: a real headless Chromium
//! driving the real page served by a real Eddy on 127.0.0.1:0.
//!
//! Without Chromium these tests are skipped with a notice (unless `CI` is
//! set: then a missing browser fails). `apt-get install -y chromium`.

#[path = "../common/mod.rs"]
mod common;
mod driver;
mod relay;

use std::net::SocketAddr;
use std::path::PathBuf;

use common::*;
use driver::{Chromium, Page};
use eddy::{ConnId, Outbox, Request, WebSocketHandler};
use relay::Relay;

fn url(addr: SocketAddr) -> String {
    format!("http://{addr}/")
}

/// Opens the chat page and waits until it is connected and welcomed.
fn open_chat(chromium: &Chromium, addr: SocketAddr) -> Page {
    let page = chromium.open(&url(addr));
    page.wait_for_status("open");
    page.wait_for_row("Welcome to WebSocket");
    page
}

/// Types `text` and sends it with Enter.
fn say(page: &Page, text: &str) {
    page.type_text(text);
    page.press("Enter");
}

/// As [`say`], but without clicking the input first: the page focuses it
/// from the start and keeps it focused after a send, and a click costs
/// about a second of headless_chrome's waiting for the element to settle.
fn say_with_keys(page: &Page, text: &str) {
    page.type_keys(text);
    page.press("Enter");
}

/// The id a page shows for its own lines: "you (N)".
fn own_id(row: &str) -> u64 {
    let who = row
        .split("who:you (")
        .nth(1)
        .unwrap_or_else(|| panic!("not an own line: {row}"));
    who.trim_end_matches(')').parse().unwrap()
}

/// The rows after the last one that contains `text`.
fn rows_after(page: &Page, text: &str) -> Vec<String> {
    let rows = page.rows();
    let at = rows
        .iter()
        .rposition(|r| r.contains(text))
        .unwrap_or_else(|| panic!("no row with {text:?}: {rows:?}"));
    rows[at + 1..].to_vec()
}

/// How many rows contain `text`.
fn count_rows(page: &Page, text: &str) -> usize {
    page.rows().iter().filter(|r| r.contains(text)).count()
}

/// The sys notice the page shows when its resume meets a new history.
const RESET_ROW: &str = "|sys:The room's history began again: earlier lines are gone.";

/// The sys notice the page shows when its resume token is not honoured.
const RESUME_REFUSED_ROW: &str =
    "|sys:Your earlier session could not be resumed: you join as someone new.";

/// Where the suite's screenshots go: under `target/`.
fn screenshot_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("screenshots")
        .join(name)
}

#[test]
fn two_tabs_chat_both_ways() {
    let Some(chromium) = Chromium::launch("two_tabs") else {
        return;
    };
    let server = TestServer::start();
    let a = open_chat(&chromium, server.addr);
    let b = open_chat(&chromium, server.addr);
    // The page works on whatever port the server got.
    assert_eq!(a.eval("location.port"), server.addr.port().to_string());

    // A hears of B; B is not told of its own arrival.
    let joined = a.wait_for_row("has joined");
    assert!(joined.contains("sys:"), "a sys line: {joined}");

    // A types and presses Enter; both see it, A's own line marked as such.
    say(&a, "Hello from A");
    let in_b = b.wait_for_row("Hello from A");
    let in_a = a.wait_for_row("Hello from A");
    assert!(
        in_a.starts_with("mine|") && in_a.contains("who:you ("),
        "{in_a}"
    );
    assert!(!in_b.starts_with("mine|"), "{in_b}");
    assert_eq!(a.focused(), "chat", "the input keeps focus after sending");
    assert_eq!(a.eval("document.getElementById('chat').value"), "");

    // B types and clicks the button.
    b.type_text("Hi A, B here");
    b.click("#send");
    let b_id = own_id(&b.wait_for_row("Hi A, B here"));
    let from_b = a.wait_for_row("Hi A, B here");
    assert!(from_b.ends_with(&format!("who:{b_id}")), "{from_b}");
    assert!(joined.contains(&format!("{b_id} has joined")), "{joined}");
    assert_eq!(b.focused(), "chat");
    assert!(
        !b.rows()
            .iter()
            .any(|r| r.contains(&format!("{b_id} has joined"))),
        "{:?}",
        b.rows()
    );

    // System lines look different from chat lines.
    let styles = a.eval(
        "(() => { const s = getComputedStyle(document.querySelector('td.sys'));
                  const u = getComputedStyle(document.querySelector('td.text'));
                  return [s.fontStyle, u.fontStyle, s.color !== u.color]; })()",
    );
    assert_eq!(styles, serde_json::json!(["italic", "normal", true]));

    // A little more conversation for the picture.
    say(&a, "Unicode works too: 中文, emoji 🙂, עברית");
    b.wait_for_row("עברית");
    say(&b, "And <b>markup</b> stays text.");
    a.wait_for_row("stays text");
    assert_text_column_is_wide(&a);
    for page in [&a, &b] {
        assert_eq!(page.errors(), serde_json::json!([]));
    }
    save_side_by_side(&chromium, &a, &b, &screenshot_path("two-tabs.png"));

    // Closing B's tab: A sees B leave.
    b.close();
    a.wait_for_row(&format!("{b_id} has left"));
}

/// Checks that a chat line's text gets most of the width, its sender the rest.
fn assert_text_column_is_wide(page: &Page) {
    let widths = page.eval(
        "(() => { const row = Array.from(document.querySelectorAll('#message tr')).find(r => r.cells.length === 2);
                  return [row.cells[0].offsetWidth, row.cells[1].offsetWidth, window.innerWidth]; })()",
    );
    let [text, who, window] = [0, 1, 2].map(|i| widths[i].as_f64().unwrap());
    assert!(
        text > 2.0 * who && text > window / 2.0,
        "text {text} px, sender {who} px, window {window} px"
    );
}

/// Saves the two tabs side by side in one PNG, composed by Chromium itself:
/// each tab is shot at `TAB` size, then both are laid out on a third page.
fn save_side_by_side(chromium: &Chromium, a: &Page, b: &Page, path: &std::path::Path) {
    const TAB: (u32, u32) = (600, 460);
    const GAP: u32 = 12;
    a.set_viewport(TAB.0, TAB.1, false);
    b.set_viewport(TAB.0, TAB.1, false);
    let (left, right) = (a.screenshot_base64(), b.screenshot_base64());
    let sheet = chromium.open("about:blank");
    sheet.set_viewport(2 * TAB.0 + 3 * GAP, TAB.1 + 2 * GAP, false);
    sheet.eval(&format!(
        "document.body.style.cssText = 'margin:0;padding:{GAP}px;display:flex;gap:{GAP}px;overflow:hidden;background:#64748b';
         document.body.innerHTML = '<img src=\"data:image/png;base64,{left}\"><img src=\"data:image/png;base64,{right}\">';
         Promise.all(Array.from(document.images).map(i => i.decode())).then(() => true)"
    ));
    sheet.save_screenshot(path);
    eprintln!("screenshot: {}", path.display());
}

#[test]
fn hostile_lines_are_shown_as_text_and_nothing_runs() {
    let Some(chromium) = Chromium::launch("hostile") else {
        return;
    };
    let lines = [
        r#"<img src=x onerror="window.__pwned='img'">"#,
        "<script>window.__pwned='script'</script>",
        "</table><b>bold?</b></td></tr>",
        r#"it's "double" & 'single' \ back\slash"#,
    ];
    // Twice: under the page's CSP, and without one, so that what keeps the
    // lines inert is seen to be the page's own escaping, not only the policy.
    let no_csp = eddy::Config {
        csp: None,
        ..config()
    };
    for config in [config(), no_csp] {
        let server = TestServer::chat(config);
        let a = open_chat(&chromium, server.addr);
        let b = open_chat(&chromium, server.addr);
        for line in lines {
            say(&a, line);
            for page in [&a, &b] {
                page.wait_for_row(line);
                assert_eq!(page.eval(LAST_LINE), line, "shown exactly as typed");
            }
        }
        for page in [&a, &b] {
            assert_eq!(
                page.eval("typeof window.__pwned"),
                "undefined",
                "something ran"
            );
            let injected = page.eval(
                "document.querySelectorAll('#message img, #message script, #message b').length",
            );
            assert_eq!(injected, 0, "markup in a line became elements");
            assert_eq!(page.eval("document.querySelectorAll('table').length"), 1);
            assert_eq!(page.errors(), serde_json::json!([]));
        }
    }
}

/// The text of the last chat line on a page.
const LAST_LINE: &str =
    "Array.from(document.querySelectorAll('#message td.text')).map(c => c.textContent).pop()";

#[test]
fn unicode_arrives_intact_and_right_to_left_reads_right_to_left() {
    let Some(chromium) = Chromium::launch("unicode") else {
        return;
    };
    let server = TestServer::start();
    let a = open_chat(&chromium, server.addr);
    let b = open_chat(&chromium, server.addr);
    for (line, direction) in [
        ("中文聊天室，你好！", "ltr"),
        ("emoji 🙂🎉 and a family 👩‍👩‍👧", "ltr"),
        ("שלום, עולם!", "rtl"),
        ("مرحبا بالعالم!", "rtl"),
    ] {
        say(&a, line);
        b.wait_for_row(line);
        assert_eq!(b.eval(LAST_LINE), line);
        let shown_as = b.eval("getComputedStyle(Array.from(document.querySelectorAll('#message td.text')).pop()).direction");
        assert_eq!(shown_as, direction, "{line}");
    }
}

/// Installed before the page's script: a fixed "random" (0, so each wait is
/// exactly half its ceiling), a count of the draws, and a record of every
/// reconnect delay the page schedules.
const WATCH_BACKOFF: &str = "window.__draws = 0;
    Math.random = () => { window.__draws += 1; return 0; };
    window.__delays = [];
    const realSetTimeout = window.setTimeout;
    window.setTimeout = function (f, delay, ...args) {
        if (f && f.name === 'connect') window.__delays.push(delay);
        return realSetTimeout.call(this, f, delay, ...args);
    };";

#[test]
fn the_page_shows_a_lost_server_and_reconnects_by_itself() {
    let Some(chromium) = Chromium::launch("reconnect") else {
        return;
    };
    let server = TestServer::start();
    let addr = server.addr;
    let page = chromium.open_with(&url(addr), WATCH_BACKOFF);
    page.wait_for_status("open");
    page.wait_for_row("Welcome to WebSocket");
    say_with_keys(&page, "in the first run");
    let old_id = own_id(&page.wait_for_row("in the first run"));
    server.shutdown();
    page.wait_for_status("closed");
    page.wait_for_row("connection lost");
    assert_eq!(
        page.eval("document.getElementById('status').textContent"),
        "disconnected"
    );
    assert_eq!(page.eval("document.getElementById('send').disabled"), true);

    // While the server is down the page retries, waiting longer each time up
    // to a cap: ceilings of 0.25, 0.5, 1, 2, 4, then 5 s, each drawn between
    // half and all of it (the pinned draw of 0 gives the half).
    page.wait_until("window.__delays.length >= 7");
    let delays = page.eval("window.__delays.slice(0, 7)");
    assert_eq!(
        delays,
        serde_json::json!([125, 250, 500, 1000, 2000, 2500, 2500])
    );
    assert!(
        page.eval("window.__draws").as_u64().unwrap() >= 7,
        "each wait is jittered"
    );
    assert!(
        page.eval("document.getElementById('retry').textContent")
            .as_str()
            .unwrap()
            .starts_with("retrying")
    );

    // A server comes back on the same port; the page finds it by itself.
    let _again = TestServer::chat_at(addr, config());
    page.wait_for_status("open");
    page.wait_until(
        "Array.from(document.querySelectorAll('#message tr')).filter(r => r.textContent.includes('Welcome to WebSocket')).length === 2",
    );
    // The page asked to resume, but this server's history is a new run,
    // and its resume token means nothing here: it is told both, and says so.
    page.wait_for_row("history began again");
    assert_eq!(
        rows_after(&page, "connection lost"),
        ["|sys:Welcome to WebSocket", RESUME_REFUSED_ROW, RESET_ROW]
    );

    // And chatting works again, both ways. Ids start afresh with the new
    // server (the page's reconnect was its first connection), so the id
    // the page had before goes to one of the clients that join now; that
    // client's line is not taken for the page's own.
    let mut client = loop {
        let (client, id) = join_with_id(addr);
        if id >= old_id {
            assert_eq!(id, old_id, "ids are dense: one of them had it");
            break client;
        }
    };
    send(&mut client, "you are back");
    let theirs = page.wait_for_row("you are back");
    assert!(!theirs.starts_with("mine|"), "{theirs}");
    say(&page, "so I am");
    assert!(page.wait_for_row("so I am").starts_with("mine|"));
    assert_eq!(recv_user_line(&mut client)["message"], "you are back");
    assert_eq!(recv_user_line(&mut client)["message"], "so I am");
}

#[test]
fn a_tab_cut_off_while_the_server_runs_shows_the_lines_it_missed_once_in_order() {
    let Some(chromium) = Chromium::launch("resume") else {
        return;
    };
    let server = TestServer::start();
    // Tab A goes through a relay, so that its connection alone can be cut.
    let relay = Relay::start(server.addr);
    let a = open_chat_at(&chromium, &url(relay.addr));
    let b = open_chat(&chromium, server.addr);
    a.wait_for_row("has joined");
    say_with_keys(&b, "before the cut, from B");
    a.wait_for_row("before the cut, from B");
    say_with_keys(&a, "before the cut, from A");
    let first_id = own_id(&a.wait_for_row("before the cut, from A"));
    b.wait_for_row("before the cut, from A");

    // The link dies with A's next line on its way back: the server has it,
    // B sees it, A's copy is lost. Then A's connection is cut, and its
    // reconnect waits in the relay.
    relay.hold();
    say_with_keys(&a, "in flight when the link died");
    b.wait_for_row("in flight when the link died");
    relay.cut();
    a.wait_for_status("closed");
    a.wait_for_row("connection lost");
    b.wait_for_row(&format!("{first_id} has left"));

    // B goes on talking while A is away.
    let missed = ["missed 1", "missed 2", "missed 3"];
    for line in missed {
        say_with_keys(&b, line);
    }
    let b_id = own_id(&b.wait_for_row("missed 3"));
    relay.release();
    a.wait_for_status("open");
    a.wait_for_row("missed 3");

    // After the break: the welcome, then what A missed, each once, in
    // order, its own lost line still marked as its own (under the id it
    // had), and no replay of what it had already shown.
    let mut expected = vec![
        "|sys:Welcome to WebSocket".to_owned(),
        format!("mine|text:in flight when the link died|who:you ({first_id})"),
    ];
    expected.extend(missed.map(|line| format!("|text:{line}|who:{b_id}")));
    assert_eq!(rows_after(&a, "connection lost"), expected);
    for line in ["before the cut, from B", "before the cut, from A"] {
        assert_eq!(count_rows(&a, line), 1, "{line}: {:?}", a.rows());
    }
    let before = a.wait_for_row("before the cut, from A");
    assert!(before.starts_with("mine|"), "{before}");

    // It came back with where it was and the welcome's resume token...
    let again = &sockets(&a)[1];
    let query = again
        .strip_prefix(&format!("ws://{}/soc?since=", relay.addr))
        .unwrap_or_else(|| panic!("{again}"));
    assert!(
        query.contains("&epoch=") && query.contains("&resume="),
        "{again}"
    );
    // ...so it has the id it had: a line it sends now is its own, under
    // that id, and both member lists have it again.
    say_with_keys(&a, "back, from A");
    let back = a.wait_for_row("back, from A");
    assert!(back.starts_with("mine|"), "{back}");
    assert_eq!(own_id(&back), first_id, "the resume token gave the id back");
    assert_eq!(
        b.wait_for_row("back, from A"),
        format!("|text:back, from A|who:{first_id}")
    );
    wait_for_members(&a, &[&format!("you ({first_id})"), &b_id.to_string()]);
    wait_for_members(&b, &[&format!("you ({b_id})"), &first_id.to_string()]);
    assert_eq!(a.errors(), serde_json::json!([]));
}

#[test]
fn a_newcomer_sees_earlier_lines_under_a_divider_then_live_ones() {
    let Some(chromium) = Chromium::launch("replay") else {
        return;
    };
    let server = TestServer::start();
    // In an empty room: nothing is replayed, so no divider.
    let first = open_chat(&chromium, server.addr);
    let (mut client, client_id) = join_with_id(server.addr);
    let earlier = ["earlier 1", "earlier 2", "earlier 3"];
    for line in earlier {
        send(&mut client, line);
    }
    first.wait_for_row("earlier 3");

    let newcomer = open_chat(&chromium, server.addr);
    newcomer.wait_for_row("earlier 3");
    send(&mut client, "live, after the newcomer came");
    for page in [&first, &newcomer] {
        page.wait_for_row("live, after the newcomer came");
    }
    let mut expected = vec![
        "|sys:Welcome to WebSocket".to_owned(),
        "divider|divider:Earlier messages".to_owned(),
    ];
    expected.extend(earlier.map(|line| format!("|text:{line}|who:{client_id}")));
    expected.push(format!(
        "|text:live, after the newcomer came|who:{client_id}"
    ));
    assert_eq!(newcomer.rows(), expected);
    assert_eq!(
        count_rows(&first, "Earlier messages"),
        0,
        "{:?}",
        first.rows()
    );
    // The end of the replay ("caught_up") is for the page, not the reader.
    for page in [&first, &newcomer] {
        assert_eq!(count_rows(page, "up to date"), 0, "{:?}", page.rows());
    }

    // The divider is in the log, read out with it, and looks like neither a
    // notice nor a line.
    let divider = newcomer.eval(
        "(() => { const d = document.querySelector('#message td.divider');
                  const s = getComputedStyle(d), n = getComputedStyle(document.querySelector('td.sys'));
                  const t = getComputedStyle(document.querySelector('td.text'));
                  return [d.closest('[aria-live]') !== null, d.colSpan, s.fontStyle,
                          s.color !== t.color, s.borderBottomWidth !== t.borderBottomWidth]; })()",
    );
    assert_eq!(divider, serde_json::json!([true, 2, "normal", true, true]));
    for page in [&first, &newcomer] {
        assert_eq!(page.errors(), serde_json::json!([]));
    }
}

#[test]
fn a_tab_away_longer_than_the_history_reaches_is_told_of_the_gap() {
    let Some(chromium) = Chromium::launch("gap") else {
        return;
    };
    let server = TestServer::chat(eddy::Config {
        history_lines: 3,
        ..config()
    });
    let relay = Relay::start(server.addr);
    let page = open_chat(&chromium, relay.addr);
    let (mut client, client_id) = join_with_id(server.addr);
    send(&mut client, "seen before the cut");
    page.wait_for_row("seen before the cut");

    relay.hold();
    relay.cut();
    page.wait_for_row("connection lost");
    for n in 1..=10 {
        send(&mut client, &format!("missed {n}"));
    }
    // The client's own copy of the last: the server has them all.
    while recv_user_line(&mut client)["message"] != "missed 10" {}
    relay.release();
    page.wait_for_row("missed 10");

    // Seqs 2 to 11 were sent; the history holds only 9 to 11.
    let mut expected = vec![
        "|sys:Welcome to WebSocket".to_owned(),
        "|sys:7 earlier lines are no longer available".to_owned(),
    ];
    expected.extend((8..=10).map(|n| format!("|text:missed {n}|who:{client_id}")));
    assert_eq!(rows_after(&page, "connection lost"), expected);
    assert_eq!(page.errors(), serde_json::json!([]));
}

#[test]
fn a_tab_replayed_nothing_resumes_from_where_it_joined_not_from_the_start() {
    let Some(chromium) = Chromium::launch("no_replay") else {
        return;
    };
    // --replay 0: a newcomer gets no earlier lines, and no caught_up.
    let server = TestServer::chat(eddy::Config {
        replay: 0,
        ..config()
    });
    let (mut client, client_id) = join_with_id(server.addr);
    send(&mut client, "before the tab came");
    recv_user_line(&mut client);
    let relay = Relay::start(server.addr);
    let page = open_chat(&chromium, relay.addr);

    relay.hold();
    relay.cut();
    page.wait_for_row("connection lost");
    send(&mut client, "while the tab was away");
    while recv_user_line(&mut client)["message"] != "while the tab was away" {}
    relay.release();
    page.wait_for_row("while the tab was away");
    assert_eq!(
        rows_after(&page, "connection lost"),
        [
            "|sys:Welcome to WebSocket".to_owned(),
            format!("|text:while the tab was away|who:{client_id}")
        ]
    );
    assert_eq!(count_rows(&page, "before the tab came"), 0);
}

#[test]
fn the_page_stays_open_across_a_restart_and_misses_nothing() {
    let Some(chromium) = Chromium::launch("restart") else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("eddy-browser-restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let config = eddy::Config {
        data_dir: Some(dir.clone()),
        ..config()
    };
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let server = TestServer::chat_at(addr, config.clone());
    let page = open_chat(&chromium, addr);
    let mut client = join(addr);
    send(&mut client, "before the restart");
    page.wait_for_row("before the restart");
    say_with_keys(&page, "from the page, before");
    page.wait_for_row("from the page, before");
    drop(client);
    server.shutdown();
    page.wait_for_row("connection lost");

    // The server comes back on its data directory; a line is said at once,
    // while the page may still be waiting to reconnect.
    let _again = TestServer::chat_at(addr, config);
    let mut client = join(addr);
    send(&mut client, "while the page was away");
    page.wait_for_status("open");
    page.wait_for_row("while the page was away");
    say_with_keys(&page, "from the page, after");
    // The client heard the replay of the first run, then both lines.
    let mut heard = Vec::new();
    while heard.last().is_none_or(|m| m != "from the page, after") {
        let line = recv_user_line(&mut client);
        heard.push(line["message"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        heard,
        [
            "before the restart",
            "from the page, before",
            "while the page was away",
            "from the page, after"
        ]
    );

    // No reset, no line missing, none twice.
    let rows = page.rows();
    assert!(
        !rows.iter().any(|r| r.contains("history began again")),
        "{rows:#?}"
    );
    for line in [
        "before the restart",
        "from the page, before",
        "while the page was away",
    ] {
        assert_eq!(count_rows(&page, line), 1, "{line}: {rows:#?}");
    }
    page.wait_for_row("from the page, after");
    assert_eq!(page.errors(), serde_json::json!([]), "the page threw");
    drop(_again);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_tutorials_own_page_still_chats_with_eddy() {
    let Some(chromium) = Chromium::launch("seed_page") else {
        return;
    };
    // The fixture hard-codes ws://localhost:8000/soc; point it at our server.
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let dir = std::env::temp_dir().join(format!("eddy-seed-page-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fixture = include_str!("../fixtures/seed/index.html");
    assert!(fixture.contains("ws://localhost:8000/soc"));
    std::fs::write(
        dir.join("index.html"),
        fixture.replace("localhost:8000", &addr.to_string()),
    )
    .unwrap();
    let config = eddy::Config {
        templates: Some(dir.clone()),
        csp: None,
        ..config()
    };
    let server = TestServer::chat_at(addr, config);

    let seed = chromium.open(&url(server.addr));
    seed.wait_for_row("Welcome to WebSocket");
    let (mut client, client_id) = join_with_id(server.addr);
    seed.wait_for_row(&format!("{client_id} has joined"));
    send(&mut client, "hello, tutorial page");
    let row = seed.wait_for_row("hello, tutorial page");
    assert!(
        row.ends_with(&format!(":{client_id}")),
        "message and id cells: {row}"
    );

    // The tutorial's Send button.
    seed.type_text("hello from 2014");
    seed.click("button");
    assert_eq!(
        recv_user_line(&mut client)["message"],
        "hello, tutorial page"
    );
    assert_eq!(recv_user_line(&mut client)["message"], "hello from 2014");
    seed.wait_for_row("hello from 2014");

    drop(client);
    seed.wait_for_row(&format!("{client_id} has left"));
    assert_eq!(seed.errors(), serde_json::json!([]), "the page threw");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The page over HTTPS: it loads, connects to `wss:` (it follows
/// `location`), and chats with a rustls client that trusts the test's CA.
/// Chromium does not know that CA: it runs with `--ignore-certificate-errors`
/// (headless_chrome's default), so this checks the protocol end to end;
/// the certificate itself is checked by the rustls clients of `tests/tls.rs`.
#[cfg(feature = "tls")]
#[test]
fn the_page_chats_over_https_and_wss() {
    use common::pki::{Pki, wss_join, wss_json};
    let Some(chromium) = Chromium::launch("https") else {
        return;
    };
    let pki = Pki::new("browser");
    let server = TestServer::chat(eddy::Config {
        tls: Some(eddy::config::TlsFiles {
            cert: pki.cert.clone(),
            key: pki.key.clone(),
        }),
        ..config()
    });
    let page = chromium.open(&format!("https://{}/", server.addr));
    page.wait_for_status("open");
    page.wait_for_row("Welcome to WebSocket");
    assert_eq!(page.eval("location.protocol"), "https:");
    assert_eq!(page.eval("window.isSecureContext"), true);

    let (mut client, client_id) = wss_join(server.addr, &pki.client());
    page.wait_for_row(&format!("{client_id} has joined"));
    say(&page, "typed in a page served over TLS");
    let line = wss_json(&mut client);
    assert_eq!(line["message"], "typed in a page served over TLS", "{line}");
    client
        .send(tungstenite::Message::text("answered over wss"))
        .unwrap();
    let row = page.wait_for_row("answered over wss");
    assert!(row.ends_with(&format!("who:{client_id}")), "{row}");
    assert_eq!(page.errors(), serde_json::json!([]), "the page threw");
}

#[test]
fn the_content_security_policy_is_in_force() {
    let Some(chromium) = Chromium::launch("csp") else {
        return;
    };
    let server = TestServer::start();
    let elsewhere = TestServer::start();
    let page = open_chat(&chromium, server.addr);
    let eval_attempt =
        "(() => { try { eval('1 + 1'); return 'ran'; } catch (e) { return e.name; } })()";
    assert_eq!(page.eval(eval_attempt), "EvalError");
    // Inline script the page did not vouch for, a script and a socket from
    // another origin: each refused, each reported as a violation.
    let violations = page.eval(&format!(
        "new Promise(resolve => {{
            const seen = [];
            document.addEventListener('securitypolicyviolation', e => {{
                seen.push(e.effectiveDirective);
                if (seen.length === 3) resolve(seen.sort());
            }});
            setTimeout(() => resolve(seen.sort()), {wait});
            window.__inline = 'no';
            const inline = document.createElement('script');
            inline.textContent = \"window.__inline = 'yes'\";
            document.head.appendChild(inline);
            const foreign = document.createElement('script');
            foreign.src = 'http://{other}/chat.js';
            document.head.appendChild(foreign);
            try {{ new WebSocket('ws://{other}/soc'); }} catch (e) {{}}
        }})",
        other = elsewhere.addr,
        wait = driver::WAIT_MS,
    ));
    assert_eq!(
        violations,
        serde_json::json!(["connect-src", "script-src-elem", "script-src-elem"])
    );
    assert_eq!(page.eval("window.__inline"), "no");

    // The control: with --csp off the same attempt runs, so the check above
    // is the policy's doing.
    let config = eddy::Config {
        csp: None,
        ..config()
    };
    let open = TestServer::chat(config);
    let unprotected = open_chat(&chromium, open.addr);
    assert_eq!(unprotected.eval(eval_attempt), "ran");
}

#[test]
fn keyboard_alone_is_enough_and_the_page_is_labelled() {
    let Some(chromium) = Chromium::launch("keyboard") else {
        return;
    };
    let server = TestServer::start();
    let page = open_chat(&chromium, server.addr);
    assert_eq!(page.focused(), "chat", "the input has focus from the start");
    assert_eq!(
        page.eval("document.getElementById('chat').labels[0].textContent"),
        "Message"
    );
    assert_eq!(
        page.eval(
            "document.getElementById('message').closest('[aria-live]').getAttribute('aria-live')"
        ),
        "polite"
    );
    assert_eq!(
        page.eval("document.getElementById('status').getAttribute('role')"),
        "status"
    );
    // Everything the page loaded came from this server.
    assert_eq!(
        page.eval("performance.getEntriesByType('resource').every(e => e.name.startsWith(location.origin))"),
        true
    );

    // Type, Enter: no click needed, the input has focus.
    page.type_keys("typed, then Enter");
    page.press("Enter");
    assert!(page.wait_for_row("typed, then Enter").starts_with("mine|"));
    // Type, Tab to the button, Enter on it; focus comes back to the input.
    page.type_keys("typed, then Tab and Enter");
    page.press("Tab");
    assert_eq!(page.focused(), "send");
    page.press("Enter");
    assert!(
        page.wait_for_row("typed, then Tab and Enter")
            .starts_with("mine|")
    );
    assert_eq!(page.focused(), "chat");
}

#[test]
fn blank_lines_are_not_sent() {
    let Some(chromium) = Chromium::launch("blank") else {
        return;
    };
    let server = TestServer::start();
    let page = open_chat(&chromium, server.addr);
    let mut client = join(server.addr);
    page.click("#chat");
    page.press("Enter");
    say(&page, "   ");
    page.click("#send");
    page.eval("document.getElementById('chat').value = ''; true");
    say(&page, "the first real line");
    assert_eq!(
        recv_user_line(&mut client)["message"],
        "the first real line"
    );
}

#[test]
fn it_fits_a_phone_and_long_lines_wrap() {
    let Some(chromium) = Chromium::launch("phone") else {
        return;
    };
    let server = TestServer::start();
    let page = open_chat(&chromium, server.addr);
    let mut client = join(server.addr);
    assert!(
        page.eval("document.querySelector('meta[name=viewport]').content")
            .as_str()
            .unwrap()
            .contains("width=device-width")
    );
    let long_word = "x".repeat(400);
    for (width, height, mobile) in [(375, 667, true), (1280, 800, false)] {
        page.set_viewport(width, height, mobile);
        send(&mut client, &long_word);
        send(&mut client, &format!("a line at {width} px"));
        page.wait_for_row(&format!("a line at {width} px"));
        let fits = page.eval(
            "(() => {
                const html = document.documentElement;
                const box = el => el.getBoundingClientRect();
                const long = Array.from(document.querySelectorAll('#message td.text')).find(c => c.textContent.length === 400);
                return {
                    noSideScroll: html.scrollWidth <= window.innerWidth,
                    wrapped: long.scrollWidth <= long.clientWidth + 1 && box(long).height > 40,
                    inputVisible: box(document.getElementById('chat')).right <= window.innerWidth && box(document.getElementById('chat')).bottom <= window.innerHeight,
                    buttonVisible: box(document.getElementById('send')).right <= window.innerWidth && box(document.getElementById('send')).bottom <= window.innerHeight,
                };
            })()",
        );
        let all_true = serde_json::json!({"noSideScroll": true, "wrapped": true, "inputVisible": true, "buttonVisible": true});
        assert_eq!(fits, all_true, "at {width}x{height}");
        assert_text_column_is_wide(&page);
        if mobile {
            page.save_screenshot(&screenshot_path("phone.png"));
        }
    }
}

#[test]
fn it_follows_new_lines_only_when_already_at_the_bottom() {
    let Some(chromium) = Chromium::launch("autoscroll") else {
        return;
    };
    let server = TestServer::start();
    let page = open_chat(&chromium, server.addr);
    page.set_viewport(600, 400, false);
    let mut client = join(server.addr);
    for i in 0..40 {
        send(&mut client, &format!("line {i}"));
    }
    page.wait_for_row("line 39");
    let at_bottom = "(() => { const l = document.getElementById('log'); return l.scrollHeight - l.scrollTop - l.clientHeight < 8; })()";
    assert_eq!(page.eval("document.getElementById('log').scrollHeight > document.getElementById('log').clientHeight"), true);
    assert_eq!(page.eval(at_bottom), true, "followed the new lines");

    // Scrolled up to read: a new line does not move the view.
    page.eval("document.getElementById('log').scrollTop = 0; true");
    send(&mut client, "while reading history");
    page.wait_for_row("while reading history");
    assert_eq!(page.eval("document.getElementById('log').scrollTop"), 0);

    // Back at the bottom: following again.
    page.eval("const l = document.getElementById('log'); l.scrollTop = l.scrollHeight; true");
    send(&mut client, "back at the bottom");
    page.wait_for_row("back at the bottom");
    assert_eq!(page.eval(at_bottom), true);
}

/// A handler that greets with a message type the page does not know, then
/// a normal notice.
struct Mystery;

impl WebSocketHandler for Mystery {
    fn open(&mut self, id: ConnId, _: &Request<'_>, out: &mut Outbox) {
        out.write_message(
            id,
            r#"{"type":"mystery","message":"<b>from the future</b>"}"#,
        );
        out.write_message(id, "not even JSON");
        out.write_message(id, r#"{"type":"sys","message":"after the mystery"}"#);
    }

    fn on_message(&mut self, _: ConnId, _: &str, _: &mut Outbox) {}
}

#[test]
fn unknown_messages_are_ignored() {
    let Some(chromium) = Chromium::launch("unknown") else {
        return;
    };
    let server = TestServer::with_handler(config(), Mystery);
    let page = chromium.open(&url(server.addr));
    page.wait_for_row("after the mystery");
    assert_eq!(page.rows().len(), 1, "{:?}", page.rows());
    assert_eq!(page.errors(), serde_json::json!([]));
}

// Rooms, names and presence ----------------------------------------------

/// The page for a room: `room` as it goes in the path (percent-encoded).
fn room_url(addr: SocketAddr, room: &str) -> String {
    format!("http://{addr}/r/{room}")
}

/// Installed before the page's script: the URL of every socket the page
/// opens, in `window.__sockets`, and every message it receives, in
/// `window.__received`. A proxy, so `WebSocket.OPEN` and the rest stay as
/// they are.
const WATCH_SOCKETS: &str = "window.__sockets = [];
    window.__received = [];
    window.WebSocket = new Proxy(window.WebSocket, {
        construct(target, args) {
            window.__sockets.push(String(args[0]));
            const socket = new target(...args);
            socket.addEventListener('message', e => window.__received.push(e.data));
            return socket;
        }
    });";

/// Opens `url` with [`WATCH_SOCKETS`] and waits until it is connected and
/// welcomed.
fn open_chat_at(chromium: &Chromium, url: &str) -> Page {
    let page = chromium.open_with(url, WATCH_SOCKETS);
    page.wait_for_status("open");
    page.wait_for_row("Welcome to WebSocket");
    page
}

/// The socket URLs the page has opened (with [`WATCH_SOCKETS`]).
fn sockets(page: &Page) -> Vec<String> {
    serde_json::from_value(page.eval("window.__sockets")).unwrap()
}

/// Waits until the page shows `room` as its room and `count` people here.
fn wait_for_presence(page: &Page, room: &str, count: u64) {
    let room = serde_json::to_string(room).unwrap();
    page.wait_until(&format!(
        "document.getElementById('room').textContent === {room}
         && document.getElementById('count').textContent === '{count} here'"
    ));
}

/// Waits until the member list shows exactly `labels`, in any order.
fn wait_for_members(page: &Page, labels: &[&str]) {
    let labels = serde_json::to_string(labels).unwrap();
    page.wait_until(&format!(
        "!document.getElementById('people').hidden
         && JSON.stringify(Array.from(document.querySelectorAll('#members li')).map(li => li.textContent).sort())
            === JSON.stringify({labels}.sort())"
    ));
}

/// The page's own id, from its entry in the member list (titled `id N`).
fn own_member_id(page: &Page) -> u64 {
    page.wait_until("document.querySelector('#members li.mine') !== null");
    let title = page.eval("document.querySelector('#members li.mine').title");
    let title = title.as_str().unwrap();
    title
        .strip_prefix("id ")
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("not an id: {title}"))
}

/// Sets the page's name as a person would: the name field, then Enter.
fn set_name(page: &Page, name: &str) {
    page.focus("#name");
    page.type_keys(name);
    page.press("Enter");
}

/// A chat client of its own in `room`, called `name`: the query built as
/// the page builds it (form-encoded), its welcome read. Returns it with
/// its id.
fn join_as(addr: SocketAddr, room: &str, name: &str) -> (Client, u64) {
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("room", room)
        .append_pair("name", name)
        .finish();
    let (mut client, response) =
        tungstenite::client(format!("ws://{addr}/soc?{query}"), tcp(addr)).expect("handshake");
    assert_eq!(response.status(), 101);
    let welcome = recv_json(&mut client);
    assert_eq!(welcome["name"], name, "{welcome}");
    (client, welcome["id"].as_u64().unwrap())
}

#[test]
fn two_tabs_in_one_room_and_one_in_another_chat_without_cross_talk() {
    let Some(chromium) = Chromium::launch("rooms") else {
        return;
    };
    let server = TestServer::start();
    let a1 = open_chat_at(&chromium, &room_url(server.addr, "Alpha"));
    let a2 = open_chat_at(&chromium, &room_url(server.addr, "Alpha"));
    // "Béta", percent-encoded in the link as a browser sends it.
    let b = open_chat_at(&chromium, &room_url(server.addr, "B%C3%A9ta"));
    // The room goes in the socket's query as typed; the server folds its
    // case, and the page shows the name the welcome gives.
    assert!(
        sockets(&a1)[0].ends_with("/soc?room=Alpha"),
        "{:?}",
        sockets(&a1)
    );
    assert!(
        sockets(&b)[0].ends_with("/soc?room=B%C3%A9ta"),
        "{:?}",
        sockets(&b)
    );
    for page in [&a1, &a2] {
        wait_for_presence(page, "alpha", 2);
    }
    wait_for_presence(&b, "béta", 1);
    assert_eq!(b.eval("document.title"), "béta · Eddy chat");

    // Each line is sent after the one before it has arrived, and the server
    // keeps each client's messages in order: had a line crossed to the other
    // room, it would have arrived there before the next line seen there.
    say_with_keys(&a1, "alpha one");
    a2.wait_for_row("alpha one");
    say_with_keys(&b, "beta one");
    b.wait_for_row("beta one");
    say_with_keys(&a2, "alpha two");
    a1.wait_for_row("alpha two");
    a2.wait_for_row("alpha two");
    say_with_keys(&b, "beta two");
    b.wait_for_row("beta two");
    for page in [&a1, &a2] {
        assert_eq!(count_rows(page, "beta"), 0, "{:?}", page.rows());
    }
    assert_eq!(count_rows(&b, "alpha"), 0, "{:?}", b.rows());
    // Joins too stay in their room: a1 heard a2 come, and nobody else.
    assert_eq!(count_rows(&a1, "has joined"), 1, "{:?}", a1.rows());
    assert_eq!(count_rows(&a2, "has joined"), 0, "{:?}", a2.rows());
    assert_eq!(count_rows(&b, "has joined"), 0, "{:?}", b.rows());

    // B goes to the other room with the room form. A name no room can have
    // is caught before the page is left...
    b.focus("#room-name");
    b.type_keys("a/b");
    b.press("Enter");
    b.wait_until(
        "document.getElementById('room-note').textContent.includes('only letters, digits')",
    );
    // ...and so is one no link can name (/r/.. is "/").
    b.focus("#room-name");
    b.type_keys("..");
    b.press("Enter");
    b.wait_until("document.getElementById('room-note').textContent.includes('cannot be linked')");
    // Then a real one: a page of its own, where B gets alpha's lines (not
    // beta's) as a newcomer.
    b.focus("#room-name");
    b.type_keys("ALPHA");
    b.press("Enter");
    b.wait_until_navigated(
        "location.pathname === '/r/ALPHA'
         && document.getElementById('status').dataset.state === 'open'
         && document.getElementById('count').textContent === '3 here'",
    );
    b.wait_for_row("alpha two");
    assert_eq!(count_rows(&b, "beta"), 0, "{:?}", b.rows());
    wait_for_presence(&b, "alpha", 3);
    wait_for_presence(&a1, "alpha", 3);
    for page in [&a1, &a2, &b] {
        assert_eq!(page.errors(), serde_json::json!([]));
    }
}

#[test]
fn a_link_to_no_possible_room_says_so_and_does_not_connect() {
    let Some(chromium) = Chromium::launch("bad_room") else {
        return;
    };
    let server = TestServer::start();
    let page = chromium.open_with(&room_url(server.addr, "no%20spaces"), WATCH_SOCKETS);
    assert_eq!(
        page.wait_for_row("is not a room"),
        "|sys:“no spaces” is not a room: a room name has only letters, digits, “-”, “_” and “.”. \
         Choose another room above."
    );
    assert_eq!(page.text("#status"), "not connected");
    assert_eq!(page.eval("document.getElementById('send').disabled"), true);
    assert!(sockets(&page).is_empty(), "{:?}", sockets(&page));
    assert_eq!(page.errors(), serde_json::json!([]));
}

#[test]
fn names_show_on_lines_and_the_member_list_follows_joins_nicks_and_leaves() {
    let Some(chromium) = Chromium::launch("names") else {
        return;
    };
    let server = TestServer::start();
    let url = room_url(server.addr, "names");
    let a = open_chat_at(&chromium, &url);
    wait_for_presence(&a, "names", 1);
    let a_id = own_member_id(&a);
    wait_for_members(&a, &[&format!("you ({a_id})")]);

    // A names itself with the name field, while connected: `/nick`.
    set_name(&a, "Ada Lovelace");
    a.wait_for_row(&format!("{a_id} is now known as Ada Lovelace"));
    wait_for_members(&a, &["you (Ada Lovelace)"]);
    assert_eq!(
        a.eval("localStorage.getItem('eddy.name')"),
        "Ada Lovelace",
        "remembered"
    );

    // B, a tab of the same browser, remembers the same name and comes with
    // it (form-encoded in the query). Now two people share it: the id goes
    // beside it.
    let b = open_chat_at(&chromium, &url);
    let b_socket = &sockets(&b)[0];
    assert!(
        b_socket.ends_with("/soc?room=names&name=Ada+Lovelace"),
        "{b_socket}"
    );
    assert_eq!(
        b.eval("document.getElementById('name').value"),
        "Ada Lovelace"
    );
    a.wait_for_row("Ada Lovelace has joined");
    wait_for_presence(&a, "names", 2);
    let b_id = own_member_id(&b);
    wait_for_members(
        &a,
        &["you (Ada Lovelace)", &format!("Ada Lovelace ({b_id})")],
    );
    wait_for_members(
        &b,
        &["you (Ada Lovelace)", &format!("Ada Lovelace ({a_id})")],
    );
    a.focus("#chat");
    say_with_keys(&a, "hello from A");
    assert_eq!(
        b.wait_for_row("hello from A"),
        format!("|text:hello from A|who:Ada Lovelace ({a_id})")
    );
    assert_eq!(
        a.wait_for_row("hello from A"),
        "mine|text:hello from A|who:you (Ada Lovelace)"
    );

    // B renames itself with a command typed in the message box; its name
    // field follows.
    say_with_keys(&b, "/nick Bea");
    a.wait_for_row("Ada Lovelace is now known as Bea");
    wait_for_members(&a, &["you (Ada Lovelace)", "Bea"]);
    wait_for_members(&b, &["you (Bea)", &format!("Ada Lovelace ({a_id})")]);
    assert_eq!(b.eval("document.getElementById('name').value"), "Bea");

    // `/me` is an action; a plain line carries the name.
    say_with_keys(&b, "/me waves");
    say_with_keys(&b, "plain line");
    a.wait_for_row("plain line");
    assert_eq!(
        rows_after(&a, "is now known as Bea"),
        [
            "|text action:* Bea waves|who:Bea",
            "|text:plain line|who:Bea"
        ]
    );
    let styles = a.eval(
        "(() => { const cells = Array.from(document.querySelectorAll('#message td.text'));
                  const action = cells.find(c => c.classList.contains('action'));
                  const plain = cells.find(c => !c.classList.contains('action'));
                  return [getComputedStyle(action).fontStyle, getComputedStyle(plain).fontStyle]; })()",
    );
    assert_eq!(styles, serde_json::json!(["italic", "normal"]));

    // B leaves: the list and the count follow.
    b.close();
    a.wait_for_row("Bea has left");
    wait_for_members(&a, &["you (Ada Lovelace)"]);
    wait_for_presence(&a, "names", 1);
    assert_eq!(a.errors(), serde_json::json!([]));
}

#[test]
fn names_made_of_markup_or_like_the_pages_own_labels_show_as_what_they_are() {
    let Some(chromium) = Chromium::launch("markup_name") else {
        return;
    };
    // Without a CSP, so that what keeps the names inert is seen to be the
    // page's own escaping, not the policy.
    let server = TestServer::chat(eddy::Config {
        csp: None,
        ..config()
    });
    let mine = "<img src=x onerror=__pwned=1>";
    let theirs = "<b>x</b><svg onload=__pwned=2>";
    let renamed = "<script>__pwned=3</script>";
    let page = open_chat_at(&chromium, &room_url(server.addr, "markup"));
    set_name(&page, mine);
    page.wait_for_row(&format!("is now known as {mine}"));
    let (mut client, _) = join_as(server.addr, "markup", theirs);
    page.wait_for_row(&format!("{theirs} has joined"));
    send(&mut client, "/me <i>acts</i>");
    send(&mut client, &format!("/nick {renamed}"));
    send(&mut client, "hi");
    page.wait_for_row("hi");
    assert_eq!(
        rows_after(&page, "has joined"),
        [
            format!("|text action:* {theirs} <i>acts</i>|who:{theirs}"),
            format!("|sys:{theirs} is now known as {renamed}"),
            format!("|text:hi|who:{renamed}"),
        ]
    );
    wait_for_members(&page, &[&format!("you ({mine})"), renamed]);

    // A name made to pass for the page's own labels ("you (3)", an
    // anonymous member's id) gets its id beside it, in quotes.
    let (mut impostor, impostor_id) = join_as(server.addr, "markup", "you (1)");
    send(&mut impostor, "it is me");
    assert_eq!(
        page.wait_for_row("it is me"),
        format!("|text:it is me|who:“you (1)” ({impostor_id})")
    );
    let (mut number, number_id) = join_as(server.addr, "markup", "7");
    send(&mut number, "a number");
    assert_eq!(
        page.wait_for_row("a number"),
        format!("|text:a number|who:“7” ({number_id})")
    );
    assert_eq!(
        page.eval("typeof window.__pwned"),
        "undefined",
        "something ran"
    );
    let injected = page
        .eval("document.querySelectorAll('body img, body svg, body b, body i, body script:not([src])').length");
    assert_eq!(injected, 0, "markup in a name became elements");
    assert_eq!(page.errors(), serde_json::json!([]));
}

#[test]
fn a_tab_whose_session_another_connection_took_comes_back_as_someone_new() {
    let Some(chromium) = Chromium::launch("taken_over") else {
        return;
    };
    let server = TestServer::start();
    let page = open_chat_at(&chromium, &room_url(server.addr, "taken"));
    let welcome: serde_json::Value =
        serde_json::from_str(page.eval("window.__received[0]").as_str().unwrap()).unwrap();
    let (id, token) = (&welcome["id"], welcome["resume"].as_str().unwrap());

    // Another connection presents the page's token: it gets the page's id,
    // and the server closes the page's connection.
    let (mut client, _) = tungstenite::client(
        format!("ws://{}/soc?room=taken&resume={token}", server.addr),
        tcp(server.addr),
    )
    .expect("handshake");
    assert_eq!(recv_json(&mut client)["id"], *id);
    page.wait_for_row("taken over by another connection");

    // The page comes back, as someone new: without the token, so it does not
    // take the id back (and that connection is not closed in turn).
    page.wait_until(
        "Array.from(document.querySelectorAll('#message tr')).filter(r => r.textContent.includes('Welcome to WebSocket')).length === 2",
    );
    let again = &sockets(&page)[1];
    assert!(!again.contains("resume="), "{again}");
    send(&mut client, "the id is mine now");
    assert_eq!(
        page.wait_for_row("the id is mine now"),
        format!("|text:the id is mine now|who:{id}"),
        "not the page's own line"
    );
    assert_eq!(page.errors(), serde_json::json!([]));
}
