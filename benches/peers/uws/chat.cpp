// A benchmark peer for Eddy: the seed's chat protocol on uWebSockets, with
// its pub/sub doing the fan-out, one topic per room. uWS is the C++ server
// Eddy's groups are modelled on (STYLE.md: "Groups in the server, as uWS
// topics"); this is how a uWS user would write the chat.
//
// Protocol (the seed tutorial's final Tornado server, as the other peers):
// - on open, the newcomer gets {"type":"sys","message":"Welcome to WebSocket"}
//   and every other client of its room {"type":"sys","message":"<id> has joined"};
// - a text frame goes to every client of the room, the sender included, as
//   {"type":"user","id":<id>,"message":"<text>"} (`id` a JSON number);
// - on close, the rest of the room get {"type":"sys","message":"<id> has left"}.
//
// Rooms: `/soc?room=NAME` (any path; NAME folded to lower case, 1-64 of
// a-z 0-9 - _ ., else 400) joins room NAME, as Eddy's `?room=` does;
// without `room` (or with it empty) a client is in one default room, and the
// protocol is exactly the seed's. With `room`, the welcome appends
// `"room":"NAME"` (as Eddy's does), which the bench's many-rooms scenario
// checks. Each room is a uWS topic: `ws->publish` for joins (it skips the
// sender, who is subscribed), `app.publish` for lines and leaves (to every
// subscriber). Each event is formatted once, here; uWS's topic tree queues
// it once and, at the end of the loop iteration, writes a frame of it into
// each subscriber's (corked) output.
//
// Settings: no compression, no SSL (the build says so too), 64 KiB messages,
// no idle timeout and no automatic pings (Eddy's bench runs without its
// heartbeat), and no cap on a client's unsent bytes (`maxBackpressure` 0),
// as the tokio peer's unbounded channels: uWS's default cap (64 KiB) would
// silently drop lines to a slow reader, which the bench counts as lost.
//
// `--port PORT` on 127.0.0.1 (0: any free port); once listening it prints
// `listening on 127.0.0.1:PORT`. `GET /` answers a line of text. SIGTERM
// (or SIGINT) ends it cleanly: a timer notices the signal, closes the listen
// socket and every connection, and the loop then runs out of work.

#include "App.h"

#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>

namespace {

/// Per connection: its id, its room (the room's topic), and whether the
/// client named the room (then the welcome names it back).
struct Client {
    std::uint64_t id = 0;
    std::string room;
    bool room_named = false;
};

/// The room a client is in when it names none.
constexpr std::string_view DEFAULT_ROOM = "lobby";

/// The longest room name, as Eddy's.
constexpr std::size_t MAX_ROOM_CHARS = 64;

/// The largest message a client may send (uWS's default is 16 KiB).
constexpr unsigned int MAX_MESSAGE_BYTES = 64 * 1024;

/// How often the shutdown timer looks at the signal flag.
constexpr int SIGNAL_POLL_MS = 50;

/// The welcome, as in the tutorial.
constexpr std::string_view WELCOME = R"({"type":"sys","message":"Welcome to WebSocket")";

/// Set by the SIGTERM/SIGINT handler; read by the shutdown timer (a signal
/// handler may do nothing else safely).
volatile std::sig_atomic_t stop_requested = 0;

/// The next client's id; ids start at 1 and are never reused (one thread).
std::uint64_t next_id = 1;

/// Set once shutdown begins: the connections being closed then announce
/// no leaves to each other.
bool shutting_down = false;

/// The app: the handlers publish through it, the shutdown timer closes it.
uWS::App *app = nullptr;

void on_signal(int) { stop_requested = 1; }

/// Appends `text` to `out` as the inside of a JSON string: quote, backslash
/// and control characters escaped; other bytes as they are (uWS has checked
/// that a text frame is UTF-8).
void append_escaped(std::string &out, std::string_view text) {
    static const char hex[] = "0123456789abcdef";
    for (unsigned char c : text) {
        switch (c) {
        case '"': out += "\\\""; break;
        case '\\': out += "\\\\"; break;
        case '\n': out += "\\n"; break;
        case '\r': out += "\\r"; break;
        case '\t': out += "\\t"; break;
        case '\b': out += "\\b"; break;
        case '\f': out += "\\f"; break;
        default:
            if (c < 0x20) {
                out += "\\u00";
                out += hex[c >> 4];
                out += hex[c & 0xf];
            } else {
                out += static_cast<char>(c);
            }
        }
    }
}

/// A `sys` notice: `{"type":"sys","message":"<id> <what>"}`.
std::string notice(std::uint64_t id, std::string_view what) {
    std::string out = R"({"type":"sys","message":")";
    out += std::to_string(id);
    out += ' ';
    out += what;
    out += "\"}";
    return out;
}

/// The room named by the query value `raw` (already percent-decoded by
/// uWS), folded to lower case; empty if the name is not one we accept.
std::string canonical_room(std::string_view raw) {
    std::string room;
    if (raw.empty() || raw.size() > MAX_ROOM_CHARS) {
        return room;
    }
    for (unsigned char c : raw) {
        if (c >= 'A' && c <= 'Z') {
            c = static_cast<unsigned char>(c - 'A' + 'a');
        }
        bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' ||
                  c == '.';
        if (!ok) {
            return {};
        }
        room += static_cast<char>(c);
    }
    return room;
}

/// The shutdown timer: once a signal has come, close the listen socket and
/// every connection (`App::close`; uWS runs each one's close handler), then
/// this timer, the last thing keeping the loop alive.
void poll_signal(us_timer_t *timer) {
    if (!stop_requested) {
        return;
    }
    shutting_down = true;
    app->close();
    us_timer_close(timer);
}

} // namespace

int main(int argc, char **argv) {
    int port = 8000;
    for (int i = 1; i < argc; i++) {
        if (std::strcmp(argv[i], "--port") == 0 && i + 1 < argc) {
            port = std::atoi(argv[++i]);
        } else {
            std::fprintf(stderr, "usage: %s [--port PORT]\n", argv[0]);
            return 2;
        }
    }

    // Before the `listening on` line: a SIGTERM right after it must find
    // the handler in place.
    std::signal(SIGTERM, on_signal);
    std::signal(SIGINT, on_signal);

    uWS::App chat;
    app = &chat;

    chat.get("/", [](auto *res, auto * /*req*/) {
        res->end("uWebSockets chat peer: WebSocket at /soc\n");
    });

    chat.ws<Client>("/*", {
        .compression = uWS::DISABLED,
        .maxPayloadLength = MAX_MESSAGE_BYTES,
        // 0: no idle timeout (with no automatic pings: see below).
        .idleTimeout = 0,
        // 0: no cap on unsent bytes, as the tokio peer (see the header).
        .maxBackpressure = 0,
        .closeOnBackpressureLimit = false,
        .resetIdleTimeoutOnSend = false,
        .sendPingsAutomatically = false,

        // The room must be read before the upgrade: the request is gone by
        // the time `open` runs.
        .upgrade = [](auto *res, auto *req, us_socket_context_t *context) {
            // getQuery(key) percent-decodes in place: call it once.
            std::string_view named = req->getQuery("room");
            std::string room = named.empty() ? std::string(DEFAULT_ROOM) : canonical_room(named);
            if (room.empty()) {
                res->writeStatus("400 Bad Request")
                    ->end("room must be 1-64 letters, digits, -, _ or .\n");
                return;
            }
            res->template upgrade<Client>(
                {0, std::move(room), !named.empty()}, req->getHeader("sec-websocket-key"),
                req->getHeader("sec-websocket-protocol"),
                req->getHeader("sec-websocket-extensions"), context);
        },

        .open = [](auto *ws) {
            Client *client = ws->getUserData();
            client->id = next_id++;
            // Subscribe first: `ws->publish` then skips this client.
            ws->subscribe(client->room);
            std::string welcome(WELCOME);
            if (client->room_named) {
                welcome += R"(,"room":")";
                welcome += client->room;
                welcome += '"';
            }
            welcome += '}';
            ws->send(welcome, uWS::OpCode::TEXT);
            ws->publish(client->room, notice(client->id, "has joined"), uWS::OpCode::TEXT);
        },

        .message = [](auto *ws, std::string_view text, uWS::OpCode opCode) {
            if (opCode != uWS::OpCode::TEXT) {
                return; // the seed's protocol is text only
            }
            Client *client = ws->getUserData();
            std::string line = R"({"type":"user","id":)";
            line += std::to_string(client->id);
            line += R"(,"message":")";
            append_escaped(line, text);
            line += "\"}";
            // The app's publish, not the socket's: the sender hears its own line.
            app->publish(client->room, line, uWS::OpCode::TEXT);
        },

        // uWS has unsubscribed the client before this runs.
        .close = [](auto *ws, int /*code*/, std::string_view /*message*/) {
            if (shutting_down) {
                return;
            }
            Client *client = ws->getUserData();
            app->publish(client->room, notice(client->id, "has left"), uWS::OpCode::TEXT);
        },
    });

    bool listening = false;
    chat.listen("127.0.0.1", port, [&listening](us_listen_socket_t *socket) {
        if (!socket) {
            return;
        }
        listening = true;
        int bound = us_socket_local_port(0, reinterpret_cast<us_socket_t *>(socket));
        std::printf("listening on 127.0.0.1:%d\n", bound);
        std::fflush(stdout);
    });
    if (!listening) {
        std::fprintf(stderr, "could not listen on 127.0.0.1:%d\n", port);
        return 1;
    }

    // Not a fallthrough timer: it keeps the loop running until it is closed.
    us_timer_t *timer = us_create_timer(reinterpret_cast<us_loop_t *>(uWS::Loop::get()), 0, 0);
    us_timer_set(timer, poll_signal, SIGNAL_POLL_MS, SIGNAL_POLL_MS);

    chat.run();
    return 0;
}
