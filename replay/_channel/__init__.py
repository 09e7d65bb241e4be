"""The live channel of the `replay` command.

`_protocol` is the wire format and `_client` its client, both standard library only;
the server lives in `replay._engine`, which it serves.
"""
