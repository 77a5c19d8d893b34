"""The hot-read pool of a PostgreSQL node when the server ends a connection that waits idle in it.

PostgreSQL stopping (or ``pg_terminate_backend``) sends each idle session a FATAL message, then
closes it. A connection can read the message before the end of the stream reaches it; asyncpg
then leaves it out of step with the server, and the next statement on it fails with an
``InternalClientError``. A read must then go to a fresh connection, not answer 500 (CI caught a
manifest GET doing so while PostgreSQL restarted under load). A relay in between holds the end of
the stream back, so the test makes that moment happen every time instead of by chance.
"""

from __future__ import annotations

import asyncio
import contextlib

from sqlalchemy import String, bindparam, func, select

from dockyard.metadata.pgcache import CachedReads
from tests.support.services import PostgresServer


class EofHoldingRelay:
    """A TCP relay to PostgreSQL that, once ``hold_eof`` is set, passes on what the server sends
    but not the end of its stream: the client's side stays open."""

    def __init__(self, port: int) -> None:
        self._upstream_port = port
        self.hold_eof = False
        self.server_closed = asyncio.Event()  # a server's stream ended while held
        self._held: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._upstream_port)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, from_server: bool) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            if from_server and self.hold_eof:
                self._held.append(dst)
                self.server_closed.set()
                return
            dst.close()

        await asyncio.gather(pump(reader, up_writer, False), pump(up_reader, writer, True))

    async def close(self) -> None:
        for writer in self._held:
            writer.close()
        if self._server is not None:
            self._server.close()


def test_a_connection_ended_by_the_server_while_idle_is_replaced_not_failed(postgres: PostgresServer) -> None:
    database = postgres.create_database("pool")
    echo = select(func.concat(bindparam("repository", type_=String), bindparam("name", type_=String)))

    async def run() -> list[str]:
        relay = EofHoldingRelay(postgres.port)
        port = await relay.start()
        reads = CachedReads(
            f"postgresql+asyncpg://{postgres.user}@127.0.0.1:{port}/{database}",
            ttl=0,
            statements={"echo": ("e", echo)},
        )
        try:
            answers = [(await reads.fetch("echo", {"repository": "a", "name": "1"}))[0]]
            relay.hold_eof = True
            # The pooled connection's backend ends (as on a fast shutdown); its FATAL reaches
            # the idle connection, the end of its stream does not.
            await asyncio.to_thread(
                postgres.psql,
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                f" WHERE datname = '{database}' AND application_name = 'dockyard-reads'",
            )
            await asyncio.wait_for(relay.server_closed.wait(), 60)
            await asyncio.sleep(0.5)  # the worker's loop reads the FATAL in the meantime
            relay.hold_eof = False
            answers.append((await reads.fetch("echo", {"repository": "b", "name": "2"}))[0])
            answers.append((await reads.fetch("echo", {"repository": "c", "name": "3"}))[0])
            return answers
        finally:
            await reads.close()
            await relay.close()

    assert asyncio.run(run()) == ["a1", "b2", "c3"]
