"""A response that sends a byte range of a local file with ``sendfile(2)``.

aiohttp's ``FileResponse`` does its own Range and conditional handling; blobs need exactly the
range the registry validated, so this sends ``count`` bytes from ``offset`` and nothing else.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

FALLBACK_CHUNK = 1 << 20


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
            loop = asyncio.get_running_loop()
            try:
                try:
                    await loop.sendfile(transport, fobj, self._offset, self._count)
                except NotImplementedError:
                    await self._copy(writer, fobj)
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

    async def _copy(self, writer: AbstractStreamWriter, fobj: object) -> None:
        loop = asyncio.get_running_loop()
        fd = fobj.fileno()  # type: ignore[attr-defined]
        offset, remaining = self._offset, self._count
        while remaining > 0:
            data = await loop.run_in_executor(None, os.pread, fd, min(FALLBACK_CHUNK, remaining), offset)
            if not data:
                break
            await writer.write(data)
            offset += len(data)
            remaining -= len(data)
