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
    """The codec as the run machine (`replay._core`) takes it: msgpack plus JSON.

    The functions themselves, not wrappers: they run once or twice per step.
    """

    encode = staticmethod(encode)
    decode = staticmethod(decode)
    to_json = staticmethod(to_json)


CODEC = MachineCodec()
