//! A client that stops reading is cut off (close 1008) once its unread
//! output passes the cap, and nobody else notices anything but its leaving.

mod common;

use std::thread;

use common::*;
use eddy::Config;

#[test]
fn a_client_that_stops_reading_is_cut_off_while_the_others_keep_receiving() {
    // Small limits so the cap is reached quickly; the kernel's socket buffers
    // (several MB on loopback) fill first, and only then our queue. A long
    // close timeout: the stuck client reads its close frame only at the end
    // of the test, and must find it still there.
    let config = Config {
        max_message_bytes: 1024,
        max_pending_bytes: 8 * 1024,
        close_timeout: std::time::Duration::from_secs(120),
        ..config()
    };
    let server = TestServer::chat(config);
    let mut sender = join(server.addr);
    let mut reader = join(server.addr);
    recv_joined(&mut sender);
    let mut stuck = join(server.addr);
    let stuck_id = recv_joined(&mut sender);
    assert_eq!(recv_joined(&mut reader), stuck_id);

    // The reader reads in its own thread, until it sees the stuck client
    // leave; it checks that it got every line, in order, meanwhile.
    let reader_thread = thread::spawn(move || {
        let mut expected = 0u64;
        loop {
            let message = recv_json(&mut reader);
            if message["type"] == "sys" {
                assert_eq!(sys_id(&message, " has left"), stuck_id);
                return (reader, expected);
            }
            let text = message["message"].as_str().unwrap();
            let n: u64 = text.split_once(' ').unwrap().0.parse().unwrap();
            assert_eq!(n, expected, "the reader missed or reordered a line");
            expected += 1;
        }
    });

    // Bounded: 100,000 lines of ~1 KB (100 MB) is far beyond any socket
    // buffer; the stuck client is cut off long before.
    let padding = "x".repeat(900);
    let mut sent = 0u64;
    let left = loop {
        assert!(sent < 100_000, "the stuck client was never cut off");
        send(&mut sender, &format!("{sent} {padding}"));
        sent += 1;
        // The sender reads its own copies as it goes, so it never lags.
        let message = recv_json(&mut sender);
        if message["type"] == "sys" {
            break message;
        }
    };
    assert_eq!(sys_id(&left, " has left"), stuck_id);

    let (mut reader, received) = reader_thread.join().unwrap();
    assert!(received >= sent - 1, "reader got {received} of {sent}");

    // The stuck client, reading at last, finds the lines that fit in the
    // socket buffers, then the close frame: 1008.
    let mut stuck_stream = stuck.get_mut().try_clone().unwrap();
    drop(stuck);
    assert_eq!(read_close_code(&mut stuck_stream), 1008);

    // And the room goes on.
    send(&mut sender, "after");
    while recv_user_line(&mut reader)["message"] != "after" {}
    assert_room_works(server.addr);
}
