"""Sans-I/O protocol code: bytes in, a value, NEED_MORE, or a ProtocolError out.

Nothing here touches a socket, the event loop or ssl; every parser has a size
cap so a slow or hostile client cannot grow a buffer without limit.
"""
