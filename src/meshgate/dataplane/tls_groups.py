"""Key-exchange groups of server contexts: Mozilla's intermediate list only.

Python 3.11's `ssl` can set a single ECDH curve (`set_ecdh_curve`) but not a
list of groups (`set_groups` arrives in 3.15), so OpenSSL's default list
(X448 and secp521r1 included) would be accepted. OpenSSL has the call we
need, `SSL_CTX_set1_groups_list`; it is reached through ctypes on the
`SSL_CTX *` the context object holds right after its object header (the
layout of CPython's `PySSLContext`, unchanged since 3.7). The pointer is
checked before use: OpenSSL must report the same options for it as Python
does for the context, else nothing is called. When anything does not match
(another Python, a stripped libssl), the default groups stay and the
caller is told so: TLS still works, with a wider group list.
"""

from __future__ import annotations

import ctypes
import logging
import ssl
from functools import cache

log = logging.getLogger("meshgate.tls")

# Mozilla's "intermediate" profile, in its order of preference.
INTERMEDIATE_GROUPS = "X25519:prime256v1:secp384r1"

_SSL_CTRL_SET_GROUPS_LIST = 92  # SSL_CTX_set1_groups_list is a macro over SSL_CTX_ctrl


@cache
def _libssl() -> ctypes.CDLL | None:
    """The libssl the `ssl` module itself uses (found through `_ssl`'s own
    dependencies, so never a second, different OpenSSL)."""
    try:
        lib = ctypes.CDLL(ssl._ssl.__file__)  # type: ignore[attr-defined]
        ctrl = lib.SSL_CTX_ctrl
        get_options = lib.SSL_CTX_get_options
    except (OSError, AttributeError):
        return None
    ctrl.restype = ctypes.c_long
    ctrl.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p)
    get_options.restype = ctypes.c_uint64
    get_options.argtypes = (ctypes.c_void_p,)
    return lib


def _ssl_ctx_pointer(ctx: ssl.SSLContext, lib: ctypes.CDLL) -> int | None:
    """The context's `SSL_CTX *`, when OpenSSL confirms it is one."""
    pointer = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    if not pointer:
        return None
    # A server context's options are a 64-bit pattern of a dozen bits: a
    # pointer to anything else does not give the same one back.
    if int(lib.SSL_CTX_get_options(pointer)) != int(ctx.options):
        return None
    return pointer


def restrict_groups(ctx: ssl.SSLContext, groups: str = INTERMEDIATE_GROUPS) -> bool:
    """Offer and accept only `groups` on `ctx`; False when it could not be done."""
    lib = _libssl()
    if lib is None:
        return False
    pointer = _ssl_ctx_pointer(ctx, lib)
    if pointer is None:
        return False
    list_ = ctypes.create_string_buffer(groups.encode("ascii"))
    return int(lib.SSL_CTX_ctrl(pointer, _SSL_CTRL_SET_GROUPS_LIST, 0, list_)) == 1


@cache
def warn_once() -> None:
    log.warning(
        "cannot restrict TLS key-exchange groups; OpenSSL's defaults stay",
        extra={"fields": {"wanted": INTERMEDIATE_GROUPS}},
    )
