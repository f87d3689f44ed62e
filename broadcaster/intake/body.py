"""A fetched feed body, decompressed here under the document limit (never by httpx).

httpx decodes a ``Content-Encoding`` a whole chunk at a time, and every coding the header
stacks: a kilobyte of gzip on the wire can be gigabytes in memory before anyone looks at
its size. The watcher reads the raw bytes and hands them to :class:`BodyDecoder`, which
inflates with ``zlib`` at most one byte past the limit at a time and stops there.

One coding at most, ``gzip`` (or ``x-gzip``; of one member or several) or ``deflate``
(zlib-wrapped, or raw as some servers send it), or none (``identity``): a stacked or
unknown coding is refused, with a :class:`~broadcaster.intake.watch.FetchError` that names
the feed.
"""

from __future__ import annotations

import zlib
from typing import Final

ACCEPT_ENCODING: Final = "gzip, deflate"
"""What the watcher asks for (``Accept-Encoding``): the codings :class:`BodyDecoder` reads."""
_GZIP: Final = frozenset({"gzip", "x-gzip"})


class BodyError(Exception):
    """The body cannot be read: over the limit, a coding refused, or corrupt."""


class BodyDecoder:
    """Feed it raw chunks (:meth:`feed`), then :meth:`finish` for the document.

    :raises BodyError: the reason names the feed by ``shown_url``.
    """

    def __init__(self, content_encoding: str, limit: int, shown_url: str) -> None:
        self.limit = limit
        self.url = shown_url
        self.raw_size = 0
        self.size = 0
        """Bytes of the document (decoded) read so far: never more than ``limit`` + 1."""
        self._chunks: list[bytes] = []
        codings = [c.strip().lower() for c in content_encoding.split(",")]
        codings = [c for c in codings if c and c != "identity"]
        if len(codings) > 1:
            raise BodyError(
                f"document refused: {shown_url} sent more than one Content-Encoding "
                f"({', '.join(codings)[:100]}); one at most is read"
            )
        self.coding = codings[0] if codings else None
        if self.coding is not None and self.coding not in _GZIP and self.coding != "deflate":
            raise BodyError(
                f"document refused: {shown_url} sent Content-Encoding {self.coding[:40]!r}; "
                "only gzip and deflate are read"
            )
        self._inflate = self._decompressor()
        self._tried_raw = False
        self._head = bytearray()
        """A deflate body's raw bytes until it gives its first output: read again as raw
        deflate if the zlib wrapper turns out to be missing (bounded by the limit)."""

    def _decompressor(self, *, raw: bool = False) -> zlib._Decompress | None:
        if self.coding is None:
            return None
        if self.coding in _GZIP:
            return zlib.decompressobj(16 + zlib.MAX_WBITS)
        return zlib.decompressobj(-zlib.MAX_WBITS if raw else zlib.MAX_WBITS)

    def _over(self) -> BodyError:
        return BodyError(
            f"document refused: over the limit of {self.limit} bytes "
            f"(stopped reading at {self.size})"
        )

    def _keep(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            raise self._over()
        self._chunks.append(data)

    def feed(self, chunk: bytes) -> None:
        self.raw_size += len(chunk)
        if self.raw_size > self.limit:  # compressed or not, never more than the limit read
            self.size = max(self.size, self.raw_size)
            raise self._over()
        if self._inflate is None:
            self._keep(chunk)
            return
        if self.coding == "deflate" and not self._tried_raw and self.size == 0:
            self._head += chunk
        self._inflate_all(chunk)

    def _inflate_all(self, data: bytes) -> None:
        while self._inflate is not None:
            if self._inflate.eof:
                rest = self._inflate.unused_data + data
                if not rest:
                    return
                if self.coding not in _GZIP:
                    raise BodyError(
                        f"document refused: {self.url} sent data after the end of its "
                        f"{self.coding} body"
                    )
                # A gzip body may be several members, one after another (RFC 1952).
                self._inflate = self._decompressor()
                data = rest
                continue
            try:
                # At most one byte past the limit: enough to know it is over.
                out = self._inflate.decompress(data, self.limit - self.size + 1)
            except zlib.error as exc:
                if self.coding == "deflate" and not self._tried_raw and self.size == 0:
                    # Some servers send deflate without its zlib wrapper: every byte so far
                    # again, as raw deflate.
                    self._tried_raw = True
                    self._inflate = self._decompressor(raw=True)
                    data, self._head = bytes(self._head), bytearray()
                    continue
                raise BodyError(
                    f"document refused: {self.url} sent a corrupt {self.coding} body ({exc})"
                ) from None
            if out:
                self._head = bytearray()  # the wrapper was right: no going back
            self._keep(out)
            data = self._inflate.unconsumed_tail
            if not data and not out:
                return

    def finish(self) -> bytes:
        """The whole document."""
        if self._inflate is not None:
            self._inflate_all(b"")
            if not self._inflate.eof:
                raise BodyError(
                    f"document refused: the {self.coding} body from {self.url} ends early"
                )
        return b"".join(self._chunks)
