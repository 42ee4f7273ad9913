#!/usr/bin/env python3
"""Packs a staging directory into a gzip'd cpio (newc) initramfs.

Written in Python rather than with cpio(1) so that device nodes can be added
without root, and so the archive is reproducible (sorted, mtime 0, owner 0).
"""
import gzip
import os
import stat
import sys

# Nodes the kernel needs before init mounts devtmpfs (it opens /dev/console
# for PID 1's stdio).
DEVICE_NODES = [("dev/console", stat.S_IFCHR | 0o600, 5, 1), ("dev/null", stat.S_IFCHR | 0o666, 1, 3)]


class CpioWriter:
    def __init__(self, out):
        self.out = out
        self.inode = 1
        self.size = 0

    def _write(self, data):
        self.out.write(data)
        self.size += len(data)

    def _pad(self):
        self._write(b"\0" * (-self.size % 4))

    def entry(self, name, mode, data=b"", rdev=(0, 0)):
        encoded = name.encode() + b"\0"
        nlink = 2 if stat.S_ISDIR(mode) else 1
        fields = [self.inode, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0]
        self.inode += 1
        self._write(b"070701" + b"".join(b"%08X" % f for f in fields))
        self._write(encoded)
        self._pad()
        self._write(data)
        self._pad()

    def trailer(self):
        self.inode = 0
        self.entry("TRAILER!!!", 0)


def walk(root):
    """Yields (archive name, absolute path) with directories before their contents."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = os.path.relpath(dirpath, root)
        if rel != ".":
            yield rel, dirpath
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            yield os.path.relpath(path, root), path


def main():
    if len(sys.argv) != 3:
        print("usage: mkinitramfs.py STAGING_DIR OUTPUT.cpio.gz", file=sys.stderr)
        return 2
    root, output = sys.argv[1], sys.argv[2]
    names = set()
    with open(output, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=6) as gz:
        cpio = CpioWriter(gz)
        for name, path in walk(root):
            st = os.lstat(path)
            names.add(name)
            if stat.S_ISDIR(st.st_mode):
                cpio.entry(name, stat.S_IFDIR | 0o755)
            elif stat.S_ISLNK(st.st_mode):
                cpio.entry(name, stat.S_IFLNK | 0o777, os.readlink(path).encode())
            elif stat.S_ISREG(st.st_mode):
                perm = 0o755 if st.st_mode & 0o111 else 0o644
                with open(path, "rb") as f:
                    cpio.entry(name, stat.S_IFREG | perm, f.read())
            else:
                print(f"mkinitramfs: skipping special file {path}", file=sys.stderr)
        if "dev" not in names:
            cpio.entry("dev", stat.S_IFDIR | 0o755)
        for name, mode, major, minor in DEVICE_NODES:
            cpio.entry(name, mode, rdev=(major, minor))
        cpio.trailer()
    print(f"mkinitramfs: {output} ({os.path.getsize(output)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
