"""One step of a file-to-file range copy: in the kernel where it can, read and write where not.
Used by the converter's writer thread (nvfp4tools/convert/stream.py)."""

from __future__ import annotations

import errno
import os

from .errors import FormatError

# copy_file_range exists but cannot copy between these files (another file system on an older
# kernel, a file system without it): fall back to read and write
_NO_KERNEL_COPY = (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP)
FALLBACK_CHUNK = 16 * 2**20   # the read/write fallback works in bounded pieces


def copy_once(src: int, dst: int, n: int, src_off: int, dst_off: int, src_name: str) -> int:
    """Copy up to N bytes from SRC_OFF of fd SRC to DST_OFF of fd DST; return how many moved
    (at least one). As large as the kernel takes, like cp: copy_file_range allocates nothing
    in user space, and small requests measured up to 2x slower."""
    try:
        k = os.copy_file_range(src, dst, n, src_off, dst_off)
    except AttributeError:   # no copy_file_range on this platform
        k = 0
    except OSError as e:
        if e.errno not in _NO_KERNEL_COPY:
            raise
        k = 0
    if k > 0:
        return k
    buf = os.pread(src, min(n, FALLBACK_CHUNK), src_off)
    if not buf:
        raise FormatError(f"{src_name}: short read at {src_off}")
    return os.pwrite(dst, buf, dst_off)
