"""A response that sends a byte range of a local file with ``sendfile(2)``.

aiohttp's ``FileResponse`` does its own Range and conditional handling; blobs need exactly the
range the registry validated, so this sends ``count`` bytes from ``offset`` and nothing else.

``loop.sendfile`` is not used: uvloop does not implement it (aiohttp then copies through Python).
On a plain TCP connection the bytes go from the page cache to the socket with ``os.sendfile``
on the socket's descriptor, waiting for it to become writable through the loop; over TLS (the
kernel cannot encrypt here) the file is read on a thread, one piece ahead of the writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import BinaryIO

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

SENDFILE_CHUNK = 1 << 24  # bytes per sendfile call: no bound needed, but a cancel is seen between calls
COPY_CHUNK = 1 << 20  # TLS: bytes read per piece (the transport encrypts it in 16 KiB records)


class SendfileResponse(web.StreamResponse):
    def __init__(self, path: Path, offset: int, count: int, *, status: int, headers: dict[str, str]) -> None:
        super().__init__(status=status, headers=headers)
        self._path = path
        self._offset = offset
        self._count = count
        self.content_length = count

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if self.prepared:
            return await super().prepare(request)
        # Open before the headers go out: a blob deleted meanwhile is still a clean error.
        fobj = open(self._path, "rb")  # noqa: SIM115 - closed below
        try:
            writer = await super().prepare(request)
            if request.method == "HEAD" or self._count == 0 or writer is None:
                return writer
            transport = request.transport
            if transport is None:
                raise ConnectionResetError("connection lost")
            try:
                sock_fd = _plain_socket_fd(transport)
                if sock_fd is None:
                    await _copy(writer, fobj, self._offset, self._count)
                else:
                    await _flush(transport, writer)
                    await _sendfile(sock_fd, fobj.fileno(), self._offset, self._count)
            except ConnectionError:
                raise
            except OSError as exc:
                # The disk failed mid-body: the status is out, so no error can be said any more.
                # Cut the connection (the client sees a short body), never leave it hanging.
                transport.abort()
                raise ConnectionResetError(f"reading the blob failed: {exc}") from exc
            await super().write_eof()
            return writer
        finally:
            fobj.close()


def _plain_socket_fd(transport: asyncio.Transport) -> int | None:
    """The descriptor of the transport's TCP socket, if the bytes may go to it unencrypted."""
    if not hasattr(os, "sendfile") or transport.get_extra_info("sslcontext") is not None:
        return None
    sock = transport.get_extra_info("socket")
    if sock is None:
        return None
    fd: int = sock.fileno()
    return fd if fd >= 0 else None


async def _flush(transport: asyncio.Transport, writer: AbstractStreamWriter) -> None:
    """Wait until the transport has handed everything it buffered (the headers) to the kernel:
    sendfile writes to the socket behind its back. With both limits at 0 the transport pauses
    the protocol while anything is buffered, and ``drain`` waits for it to resume."""
    if transport.get_write_buffer_size() == 0:
        return
    high, low = transport.get_write_buffer_limits()
    transport.set_write_buffer_limits(high=0, low=0)
    try:
        while transport.get_write_buffer_size() > 0:
            if transport.is_closing():
                raise ConnectionResetError("connection lost")
            await writer.drain()
    finally:
        if not transport.is_closing():
            transport.set_write_buffer_limits(high=high, low=low)


async def _sendfile(sock_fd: int, file_fd: int, offset: int, count: int) -> None:
    """``count`` bytes of the file from ``offset`` into the (non-blocking) socket, zero-copy.

    Writable-waits go through the loop on a duplicate of the socket's descriptor: the loop
    refuses a watcher on the transport's own one, and the duplicate also keeps the socket open
    while this runs, whatever the transport does meanwhile.
    """
    loop = asyncio.get_running_loop()
    out = os.dup(sock_fd)
    try:
        while count > 0:
            try:
                sent = os.sendfile(out, file_fd, offset, min(count, SENDFILE_CHUNK))
            except BlockingIOError:
                await _writable(loop, out)
                continue
            if sent == 0:
                raise OSError(f"the file ended {count} bytes early")
            offset += sent
            count -= sent
    finally:
        os.close(out)


async def _writable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    ready = loop.create_future()
    loop.add_writer(fd, _set_done, ready)
    try:
        await ready
    finally:
        loop.remove_writer(fd)


def _set_done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _copy(writer: AbstractStreamWriter, fobj: BinaryIO, offset: int, count: int) -> None:
    """Read on a thread, one piece ahead, and write through the transport (TLS encrypts it)."""
    loop = asyncio.get_running_loop()
    fd = fobj.fileno()

    def read(at: int, remaining: int) -> asyncio.Future[bytes]:
        return loop.run_in_executor(None, os.pread, fd, min(COPY_CHUNK, remaining), at)

    pending: asyncio.Future[bytes] | None = read(offset, count)
    try:
        while pending is not None:
            data = await pending
            pending = None
            if not data:
                raise OSError(f"the file ended {count} bytes early")
            offset += len(data)
            count -= len(data)
            if count > 0:
                pending = read(offset, count)
            await writer.write(data)
    finally:
        if pending is not None:  # the file is closed after this returns: no read may outlive it
            with contextlib.suppress(OSError):
                await asyncio.shield(pending)
