"""The value codec: msgpack with a format-version byte, and the JSON rendering for SQL.

`encode` (in `_encoding`) and `decode` (in `_decoding`) turn the supported values
(docs/concepts.md) into bytes and back, exactly; `to_json` (in `_json`) renders them
for SQL; `_types` holds the limits, the on-disk ext codes and the registry of user
classes. No stored bytes, however
tampered, can crash the process or make it run code chosen by the data.
"""

from replay._codec._decoding import decode
from replay._codec._encoding import encode
from replay._codec._json import to_json
from replay._codec._types import (
    MAX_DEPTH,
    MAX_ENCODED_BYTES,
    MAX_JSON_CHARS,
    register_type,
)
from replay._codec._types import by_class as _by_class
from replay._codec._types import by_tag as _by_tag
from replay._codec._types import unregister as _unregister

__all__ = [
    "CODEC",
    "MAX_DEPTH",
    "MAX_ENCODED_BYTES",
    "MAX_JSON_CHARS",
    "_by_class",
    "_by_tag",
    "_unregister",
    "decode",
    "encode",
    "register_type",
    "to_json",
]


class MachineCodec:
    """The codec as the run machine (`replay._core`) takes it: msgpack plus JSON."""

    @staticmethod
    def encode(value: object, key: str) -> bytes:
        """Encode `value`, the value of `key`."""
        return encode(value, key=key)

    @staticmethod
    def decode(data: bytes) -> object:
        """Decode recorded bytes into a fresh object."""
        return decode(data)

    @staticmethod
    def to_json(value: object) -> str | None:
        """Render `value` as JSON text for SQL."""
        return to_json(value)


CODEC = MachineCodec()
