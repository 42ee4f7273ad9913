#!/usr/bin/env python3
"""Layer check: no upward or sideways #include (or CMake link) between src/ folders.

Layers, lowest first (each may use itself and everything below it):

    base -> memory -> virtio -> vsock/packet -> vsock/connection
         -> vsock/transport -> vsock/router -> vsock/pump -> vsock/muxer

    vhost_user  base, memory, virtio (never vsock/*)
    metrics     everything above (snapshots of vsock and vhost_user stats)
    daemon      everything above and metrics; not testing (its tests may, see below)
    testing     anything (simulator, test harnesses)

Test files inside a layer (*_test.cpp, *_test.h, test_support.h,
*_test_support.h, *_test_fixture.h, *_test_harness.h) may also include
testing/ (e.g. testing/temp_dir.h); nothing else higher. A non-test file may
not include a test file. tests/, bench/ and fuzz/ are not checked: they may
include anything.

Checked: every `#include "..."` in src/**/*.{h,cpp} (paths are relative to
src/, or to the including file's folder), and, unless --no-cmake, each
src/**/CMakeLists.txt: the vuv_* targets named by target_link_libraries and
vuv_add_unit_test(... LIBS ...) must live in allowed layers (unit tests under
the test-file rule). A folder under src/ that is not in LAYERS is an error.

Usage: scripts/check_layers.py [--root DIR] [--no-cmake] [--table]
Exit status 0 when clean, 1 with one line per violation (file:line: ...).
"""

import argparse
import re
import sys
from pathlib import Path

# The one-way chain, lowest first.
CHAIN = [
    "base",
    "memory",
    "virtio",
    "vsock/packet",
    "vsock/connection",
    "vsock/transport",
    "vsock/router",
    "vsock/pump",
    "vsock/muxer",
]

# layer -> layers it may include (itself included).
LAYERS = {layer: set(CHAIN[: i + 1]) for i, layer in enumerate(CHAIN)}
LAYERS["vhost_user"] = {"base", "memory", "virtio", "vhost_user"}
LAYERS["metrics"] = set(CHAIN) | {"vhost_user", "metrics"}
LAYERS["daemon"] = set(CHAIN) | {"vhost_user", "metrics", "daemon"}
LAYERS["testing"] = set(LAYERS["daemon"]) | {"testing"}

# Layers a test file may include on top of its own layer's.
TEST_EXTRA = {"testing"}

# Known violations, each owned by someone moving it away: (path relative to
# the repository, layer it reaches). An entry that no longer matches anything is
# itself reported, so the list only shrinks.
EXCEPTIONS = {
    # The state machine is tested over real socketpairs through the transport's
    # endpoints; to go when the test gets a socketpair HostEndpoint of its own.
    ("src/vsock/connection/connection_test.cpp", "vsock/transport"),
    ("src/vsock/connection/CMakeLists.txt", "vsock/transport"),
}

TEST_FILE = re.compile(
    r"(_test\.cpp|_test\.h|(^|_)test_support\.h|_test_fixture\.h|_test_harness\.h)$"
)
INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"]+)"')


def is_test_file(path: Path) -> bool:
    return bool(TEST_FILE.search(path.name))


def layer_of(rel: Path):
    """Layer of a path relative to src/, or None if its folder is not in LAYERS."""
    parts = rel.parts
    if len(parts) < 2:
        return None
    name = parts[0]
    if name == "vsock":
        if len(parts) < 3:
            return None
        name = f"vsock/{parts[1]}"
    return name if name in LAYERS else None


def folder_of(rel: Path) -> str:
    parts = rel.parts[:-1]
    if parts and parts[0] == "vsock" and len(parts) >= 2:
        return "/".join(parts[:2])
    return "/".join(parts[:1]) or "."


def direction(src_layer: str, dst_layer: str) -> str:
    return "upward" if src_layer in LAYERS.get(dst_layer, set()) else "sideways"


def allowed(src_layer: str, dst_layer: str, test: bool) -> bool:
    ok = LAYERS[src_layer]
    return dst_layer in ok or (test and dst_layer in TEST_EXTRA)


class Checker:
    def __init__(self, root: Path):
        self.root = root
        self.src = root / "src"
        self.errors = []
        self.used_exceptions = set()

    def report(self, where: str, message: str):
        self.errors.append(f"{where}: {message}")

    def excepted(self, rel_repo: str, dst_layer: str) -> bool:
        key = (rel_repo, dst_layer)
        if key in EXCEPTIONS:
            self.used_exceptions.add(key)
            return True
        return False

    def check_folders(self):
        for path in sorted(self.src.rglob("*")):
            if not path.is_file() or path.suffix not in (".h", ".cpp", ".txt"):
                continue
            if path.suffix == ".txt" and path.name != "CMakeLists.txt":
                continue
            rel = path.relative_to(self.src)
            if layer_of(rel) is None:
                folder = folder_of(rel)
                self.report(
                    f"src/{rel}",
                    f"folder src/{folder} is not a known layer: "
                    "add it to the layer table in scripts/check_layers.py",
                )

    def resolve(self, path: Path, target: str):
        """The included file relative to src/, or None if it is not under src/."""
        for base in (path.parent, self.src):
            candidate = (base / target).resolve()
            try:
                rel = candidate.relative_to(self.src.resolve())
            except ValueError:
                continue
            if candidate.is_file():
                return rel
        return None

    def check_includes(self):
        files = sorted(p for ext in ("*.h", "*.cpp") for p in self.src.rglob(ext))
        for path in files:
            rel = path.relative_to(self.src)
            src_layer = layer_of(rel)
            if src_layer is None:
                continue  # reported by check_folders
            test = is_test_file(path)
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
            for lineno, line in enumerate(lines, 1):
                m = INCLUDE.match(line)
                if not m:
                    continue
                where = f"src/{rel}:{lineno}"
                target = m.group(1)
                inc = self.resolve(path, target)
                if inc is None:
                    self.report(where, f'"{target}" is not a file under src/ (use <...> for other headers)')
                    continue
                dst_layer = layer_of(inc)
                if dst_layer is None:
                    continue  # its folder is reported by check_folders
                if not test and is_test_file(inc):
                    self.report(where, f'non-test file includes test file "{target}"')
                    continue
                if allowed(src_layer, dst_layer, test):
                    continue
                if self.excepted(f"src/{rel}", dst_layer):
                    continue
                kind = "test file in " if test else ""
                self.report(
                    where,
                    f'{direction(src_layer, dst_layer)} include "{target}": '
                    f"{kind}{src_layer} may not include {dst_layer}",
                )

    def check_cmake(self):
        lists = sorted(self.src.rglob("CMakeLists.txt"))
        target_layer = {}
        texts = {}
        for path in lists:
            rel = path.relative_to(self.src)
            layer = layer_of(rel)
            if layer is None:
                continue
            text = re.sub(r"#[^\n]*", "", path.read_text(encoding="utf-8"))
            texts[path] = (rel, layer, text)
            for m in re.finditer(r"\badd_library\s*\(\s*(\S+)", text):
                target_layer[m.group(1)] = layer
        for path, (rel, layer, text) in texts.items():
            calls = [(m, False) for m in re.finditer(r"\btarget_link_libraries\s*\(([^)]*)\)", text)]
            calls += [(m, True) for m in re.finditer(r"\bvuv_add_\w*test\s*\(([^)]*)\)", text)]
            for m, test in calls:
                args = m.group(1).split()
                if test:
                    args = args[args.index("LIBS") + 1 :] if "LIBS" in args else []
                lineno = text.count("\n", 0, m.start()) + 1
                for name in args:
                    dst_layer = target_layer.get(name)
                    if dst_layer is None or allowed(layer, dst_layer, test):
                        continue
                    if self.excepted(f"src/{rel}", dst_layer):
                        continue
                    kind = "test in " if test else ""
                    self.report(
                        f"src/{rel}:{lineno}",
                        f"{direction(layer, dst_layer)} link to {name}: {kind}{layer} may not use {dst_layer}",
                    )

    def check_exceptions(self):
        for path, layer in sorted(EXCEPTIONS - self.used_exceptions):
            self.report(path, f"stale entry in EXCEPTIONS (no longer reaches {layer}): remove it from scripts/check_layers.py")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--no-cmake", action="store_true", help="check #includes only")
    parser.add_argument("--table", action="store_true", help="print the allowed-dependency table and exit")
    args = parser.parse_args()

    if args.table:
        for layer, deps in LAYERS.items():
            below = [d for d in list(LAYERS) if d in deps and d != layer]
            print(f"{layer:18} {', '.join(below) or '-'}")
        print(f"{'(test files)':18} + {', '.join(sorted(TEST_EXTRA))}")
        return 0

    checker = Checker(args.root)
    checker.check_folders()
    checker.check_includes()
    if not args.no_cmake:
        checker.check_cmake()
    if args.no_cmake:
        checker.used_exceptions |= {e for e in EXCEPTIONS if e[0].endswith("CMakeLists.txt")}
    checker.check_exceptions()
    for line in checker.errors:
        print(line)
    if checker.errors:
        print(f"check_layers: {len(checker.errors)} violation(s); the table is in scripts/check_layers.py", file=sys.stderr)
        return 1
    print("check_layers: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
