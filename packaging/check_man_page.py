#!/usr/bin/env python3
"""Fails when a long option of `vhost-user-vsock --help`, or a --vm key it
lists, is missing from the man page source, so the two cannot drift apart.

usage: check_man_page.py DAEMON MAN_SOURCE.scd
"""
import re
import subprocess
import sys


def main():
    daemon, man_source = sys.argv[1], sys.argv[2]
    help_text = subprocess.run([daemon, "--help"], check=True, capture_output=True, text=True).stdout
    with open(man_source, encoding="utf-8") as f:
        man = f.read()
    options = sorted(set(re.findall(r"(?m)^\s+(?:-\w,)?(--[a-z][a-z0-9-]*)", help_text)))
    if len(options) < 10:
        sys.exit(f"only {len(options)} long options parsed from --help; has its format changed?")
    # An option is documented when it starts a definition: "*--name*".
    missing = [o for o in options if f"*{o}*" not in man]
    keys_line = re.search(r"Keys \(spelled with '-' or '_'\): ([^.]+)\.", help_text)
    if not keys_line:
        sys.exit("--help no longer lists the --vm keys; update this check")
    keys = [k.strip().replace("-", "_") for k in keys_line.group(1).split(",")]
    missing += [f"--vm key {k}" for k in keys if not re.search(rf"(?m)^\|\s+{k}$", man)]
    if missing:
        print(f"{man_source} does not document: " + ", ".join(missing), file=sys.stderr)
        print("add each to the man page (and docs/configuration.md)", file=sys.stderr)
        sys.exit(1)
    print(f"man page documents all {len(options)} long options and {len(keys)} --vm keys")


if __name__ == "__main__":
    main()
