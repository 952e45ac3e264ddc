"""The seed tutorial's chat server, as a benchmark peer.

This reproduces the final server of the seed tutorial
(shared/seed/tornado-websocket-chat.txt): its last ``SocketHandler``, the one
after "聊天能力, 展开!" with the JSON protocol of "更换协议" and the
``on_message`` added at the end. It is written afresh, not pasted, and behaves
as the tutorial's does:

- a class-level ``clients`` set, and ``send_to_all`` calling
  ``c.write_message(json.dumps(message))`` on each client in turn;
- ``id(self)`` as the client's id (a JSON number in "user" messages);
- ``open`` writes the welcome, then tells the others "<id> has joined", and
  only then adds itself, so a newcomer never sees its own join;
- ``on_message`` sends every client, the sender included, the line;
- ``on_close`` removes itself, then tells the rest "<id> has left".

Differences, all for benchmarking only: the port comes from ``--port`` and
the server binds 127.0.0.1 only; ``GET /`` answers a line of text instead of
rendering the template; the server prints ``listening on 127.0.0.1:PORT`` once
it accepts connections; SIGTERM stops it cleanly. It runs on ``asyncio.run``
rather than the deprecated ``IOLoop.instance()``, which is the same loop in
Tornado 6. Tornado's websocket settings are left at their defaults.
"""

import argparse
import asyncio
import json
import signal

import tornado.httpserver
import tornado.netutil
import tornado.web
import tornado.websocket


class Index(tornado.web.RequestHandler):
    def get(self):
        # The tutorial renders templates/index.html here; the benchmark never
        # asks for the page, so a line of text stands in for it.
        self.write("Eddy benchmark peer: the seed's Tornado chat; WebSocket at /soc\n")


class SocketHandler(tornado.websocket.WebSocketHandler):
    clients = set()

    @staticmethod
    def send_to_all(message):
        for c in SocketHandler.clients:
            c.write_message(json.dumps(message))

    def open(self):
        self.write_message(json.dumps({
            "type": "sys",
            "message": "Welcome to WebSocket",
        }))
        SocketHandler.send_to_all({
            "type": "sys",
            "message": str(id(self)) + " has joined",
        })
        SocketHandler.clients.add(self)

    def on_close(self):
        SocketHandler.clients.remove(self)
        SocketHandler.send_to_all({
            "type": "sys",
            "message": str(id(self)) + " has left",
        })

    def on_message(self, message):
        SocketHandler.send_to_all({
            "type": "user",
            "id": id(self),
            "message": message,
        })


async def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000,
                        help="port to listen on, on 127.0.0.1 (0: any free port)")
    args = parser.parse_args()

    app = tornado.web.Application([
        ("/", Index),
        ("/soc", SocketHandler),
    ])
    # What app.listen(port) does, split in two so that the bound port can be
    # printed even when --port 0 asked for any free one.
    sockets = tornado.netutil.bind_sockets(args.port, address="127.0.0.1")
    server = tornado.httpserver.HTTPServer(app)
    server.add_sockets(sockets)
    port = sockets[0].getsockname()[1]

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    print(f"listening on 127.0.0.1:{port}", flush=True)
    await stop.wait()
    server.stop()


if __name__ == "__main__":
    asyncio.run(main())
