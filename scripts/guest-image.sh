#!/usr/bin/env bash
# Builds the end-to-end test guest, or reuses the cached one:
#   vmlinux            Debian 12's 6.1 kernel, unpacked from its bzImage to a plain ELF
#   initramfs.cpio.gz  busybox-static, socat (+ its libraries), our vsock_tool,
#                      the kernel's own vsock_test, the virtio/vsock/virtio_net
#                      modules (and vsock_loopback, loaded on demand) and tests/e2e/guest/init
#   vsock_tool         the same static test tool, for use on the host
#   vsock_test.missing only when vsock_test could not be built: the reason
#
# The image lives in ${VUV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vhost-user-vsock}/guest-<hash>,
# where <hash> covers this script, the guest sources and the package versions
# used, so it is rebuilt only when one of them changes. The most recently used
# ${VUV_GUEST_IMAGES_KEPT:-3} images are kept (a cache hit touches its image), so
# worktrees or CI runs at different hashes do not rebuild each other's. The kernel .deb (and
# linux-source-6.1, for tools/testing/vsock) is fetched with `apt-get download`
# and unpacked into the cache; nothing is installed into /boot or /usr/src.
#
# usage: scripts/guest-image.sh [--force]
# The last line printed is the image directory.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cache=${VUV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vhost-user-vsock}
guest_src=$root/tests/e2e/guest
image_tools=$root/tests/e2e/image
force=0
[[ ${1:-} == --force ]] && force=1
images_kept=${VUV_GUEST_IMAGES_KEPT:-3}

log() { echo "guest-image: $*" >&2; }
die() {
  log "error: $*"
  exit 1
}

mkdir -p "$cache/debs"
exec 9>"$cache/guest-image.lock"
flock 9 # one builder at a time; the others then find the finished image
[[ $images_kept =~ ^[1-9][0-9]*$ ]] || die "VUV_GUEST_IMAGES_KEPT must be a positive number, not '$images_kept'"

for tool in apt-cache apt-get dpkg-deb dpkg-query depmod modprobe gcc python3 flock; do
  command -v "$tool" >/dev/null || die "'$tool' not found; run scripts/install-deps.sh"
done
if [[ ! -x /bin/busybox ]] || ldd /bin/busybox >/dev/null 2>&1; then
  die "/bin/busybox missing or not static; install busybox-static (scripts/install-deps.sh)"
fi
socat_bin=$(command -v socat) || die "socat not found; run scripts/install-deps.sh"

installed_version() {
  dpkg-query -W -f='${Version}' "$1" 2>/dev/null || die "package $1 is not installed; run scripts/install-deps.sh"
}

# The versioned kernel package that linux-image-amd64 currently depends on.
resolve_kernel() {
  { apt-cache depends linux-image-amd64 2>/dev/null || true; } |
    sed -n 's/^ *Depends: \(linux-image-6\.1\.[^ ]*-amd64\(-unsigned\)\?\)$/\1/p' | head -1
}
kernel_pkg=$(resolve_kernel)
if [[ -z $kernel_pkg && $(id -u) -eq 0 ]]; then
  log "refreshing apt lists to find the kernel package"
  apt-get update -q >&2 || true
  kernel_pkg=$(resolve_kernel)
fi
kernel_version=""
if [[ -n $kernel_pkg ]]; then
  kernel_version=$({ apt-cache policy "$kernel_pkg" 2>/dev/null || true; } | sed -n 's/^ *Candidate: //p')
fi
if [[ -z $kernel_pkg || -z $kernel_version || $kernel_version == "(none)" ]]; then
  # Offline: fall back to the newest image already built (its stamp's age:
  # a cache hit touches the directory, not the stamp), if any.
  newest=$(find "$cache" -mindepth 2 -maxdepth 2 -name stamp -printf '%T@ %h\n' |
    sort -rn | sed -n 's|^[^ ]* \(.*/guest-[^/]*\)$|\1|p' | head -1)
  if [[ -n $newest ]]; then
    touch "$newest"
    log "cannot resolve linux-image-amd64 with apt-cache; reusing $newest"
    echo "$newest"
    exit 0
  fi
  die "cannot resolve the Debian 6.1 kernel package (apt-cache depends linux-image-amd64)"
fi

# The kernel's own tools/testing/vsock, from the same kernel release. Missing
# (offline, no candidate) is not fatal: the image says why and the vsock_test
# cases report SKIPPED with that reason.
source_pkg=linux-source-6.1
source_version=$({ apt-cache policy "$source_pkg" 2>/dev/null || true; } | sed -n 's/^ *Candidate: //p')
[[ $source_version == "(none)" ]] && source_version=""

inputs=$(
  cat "$0" "$guest_src"/* "$image_tools"/*
  echo "kernel $kernel_pkg $kernel_version"
  echo "source $source_pkg ${source_version:-none}"
  echo "busybox-static $(installed_version busybox-static)"
  echo "socat $(installed_version socat)"
  echo "libc6 $(installed_version libc6)"
  gcc --version | head -1
)
hash=$(sha256sum <<<"$inputs" | cut -c1-16)
out=$cache/guest-$hash
# An image whose linux-source download failed is built again (the failure may
# have been transient); one whose vsock_test did not compile is not.
if [[ $force -eq 0 && -f $out/stamp ]] && ! grep -qs '^apt-get download' "$out/vsock_test.missing"; then
  log "cached: $out"
  touch "$out" # in use: the last one pruning would remove
  echo "$out"
  exit 0
fi

log "building $out ($kernel_pkg $kernel_version)"
work=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$work"' EXIT

# Prints the cached .deb of package $1 at version $2, downloading it once.
cached_deb() {
  local debs=("$cache/debs/${1}_${2//:/%3a}_"*.deb)
  if ((${#debs[@]} == 0)); then
    (cd "$cache/debs" && apt-get download "$1=$2" >&2) || return 1
    debs=("$cache/debs/${1}_${2//:/%3a}_"*.deb)
    ((${#debs[@]} > 0)) || return 1
  fi
  echo "${debs[0]}"
}

# Kernel: download once per version, unpack, resolve module dependencies.
shopt -s nullglob
deb=$(cached_deb "$kernel_pkg" "$kernel_version") || die "apt-get download $kernel_pkg=$kernel_version failed"
dpkg-deb -x "$deb" "$work/kernel"
module_dirs=("$work/kernel/lib/modules"/*)
((${#module_dirs[@]} > 0)) || die "no lib/modules in $deb"
kver=$(basename "${module_dirs[0]}")
[[ -n $kver && -f $work/kernel/boot/vmlinuz-$kver ]] || die "no kernel found in $deb"
depmod -b "$work/kernel" "$kver"

# Builds the kernel's tools/testing/vsock/vsock_test from linux-source deb $1
# into $2: only that folder is unpacked, the objects its Makefile links are
# compiled statically against the system's linux-libc-dev headers, and
# ARRAY_SIZE (from the kernel's tools/include) is defined here.
build_vsock_test() {
  local dir=$work/vsock-src tarball objects sources=()
  mkdir -p "$dir"
  dpkg-deb --fsys-tarfile "$1" | tar -x -C "$dir" --wildcards '*/linux-source-*.tar.xz' || return 1
  tarball=$(find "$dir" -name 'linux-source-*.tar.xz' | head -1)
  [[ -n $tarball ]] || return 1
  xz -dc "$tarball" | tar -x -C "$dir" --wildcards '*/tools/testing/vsock/*' || return 1
  rm -f "$tarball"
  dir=$(find "$dir" -type d -path '*/tools/testing/vsock' | head -1)
  objects=$(sed -n 's/^vsock_test: *//p' "$dir/Makefile")
  for obj in $objects; do sources+=("$dir/${obj%.o}.c"); done
  ((${#sources[@]} > 0)) || return 1
  # (ld's warning that a static getaddrinfo needs NSS at runtime is kept in
  # the log only: the control channel uses numeric addresses.)
  gcc -static -O2 -Wall -Wno-pointer-sign -fno-strict-overflow -fno-strict-aliasing -fno-common -D_GNU_SOURCE \
    '-DARRAY_SIZE(a)=(sizeof(a) / sizeof((a)[0]))' -I"$dir" -o "$2" "${sources[@]}" >"$work/vsock_test.log" 2>&1 ||
    { cat "$work/vsock_test.log"; return 1; }
  # --list exits with status 1 by design.
  { "$2" --list || true; } | grep -q 'SOCK_SEQPACKET'
}

stage=$work/initramfs
mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,run,root,lib/modules}
# Bus drivers first so the device exists when the vsock transport loads.
modules=()
for top in virtio_pci virtio_pci_modern_dev virtio_pci_legacy_dev vmw_vsock_virtio_transport virtio_net; do
  while read -r _ path; do
    rel=${path#"$work/kernel/lib/modules/"}
    [[ " ${modules[*]} " == *" $rel "* ]] || modules+=("$rel")
  done < <(modprobe -d "$work/kernel" -S "$kver" --show-depends "$top" | grep '^insmod ')
done
for rel in "${modules[@]}"; do
  mkdir -p "$stage/lib/modules/$(dirname "$rel")"
  cp "$work/kernel/lib/modules/$rel" "$stage/lib/modules/$rel"
done
printf '%s\n' "${modules[@]}" >"$stage/etc/modules.order"
log "modules: $(printf '%s ' "${modules[@]##*/}")"
# vsock_loopback (CID 1 inside the guest) is in the image but not loaded at
# boot: only the forward group loads it (its insmod list: /etc/modules.loopback).
: >"$stage/etc/modules.loopback"
while read -r _ path; do
  rel=${path#"$work/kernel/lib/modules/"}
  [[ " ${modules[*]} " == *" $rel "* ]] && continue
  mkdir -p "$stage/lib/modules/$(dirname "$rel")"
  cp "$work/kernel/lib/modules/$rel" "$stage/lib/modules/$rel"
  echo "$rel" >>"$stage/etc/modules.loopback"
done < <(modprobe -d "$work/kernel" -S "$kver" --show-depends vsock_loopback | grep '^insmod ')
[[ -s $stage/etc/modules.loopback ]] || die "vsock_loopback not found in $kver"
python3 "$image_tools/extract_vmlinux.py" "$work/kernel/boot/vmlinuz-$kver" "$work/vmlinux" >&2
rm -rf "$work/kernel"

# Userland: static busybox with an applet link per command, socat with the
# libraries ldd names, our tool.
cp /bin/busybox "$stage/bin/busybox"
while read -r applet; do
  [[ -e $stage/$applet || -L $stage/$applet ]] || ln -s /bin/busybox "$stage/$applet"
done < <(/bin/busybox --list-full)
cp "$socat_bin" "$stage/usr/bin/socat"
while read -r lib; do
  mkdir -p "$stage$(dirname "$lib")"
  cp -L "$lib" "$stage$lib"
done < <(ldd "$socat_bin" | grep -oE '/[^ ]+\.so[^ ]*')
gcc -static -O2 -Wall -Wextra -Werror -o "$work/vsock_tool" "$guest_src/vsock_tool.c"
"$work/vsock_tool" selftest >&2
cp "$work/vsock_tool" "$stage/bin/vsock_tool"
source_deb=""
vsock_test_missing=""
if [[ -z $source_version ]]; then
  vsock_test_missing="apt-cache has no candidate for $source_pkg"
elif ! source_deb=$(cached_deb "$source_pkg" "$source_version"); then
  vsock_test_missing="apt-get download $source_pkg=$source_version failed"
  source_deb=""
elif ! build_vsock_test "$source_deb" "$work/vsock_test" >&2; then
  vsock_test_missing="building tools/testing/vsock/vsock_test from $source_pkg $source_version failed"
else
  cp "$work/vsock_test" "$stage/bin/vsock_test"
fi
[[ -z $vsock_test_missing ]] || log "warning: no vsock_test in the guest: $vsock_test_missing"
cp "$guest_src/init" "$stage/init"
chmod 0755 "$stage/init"
echo "root:x:0:0:root:/root:/bin/sh" >"$stage/etc/passwd"
echo "root:x:0:" >"$stage/etc/group"
python3 "$image_tools/mkinitramfs.py" "$stage" "$work/initramfs.cpio.gz" >&2

mkdir -p "$work/image"
mv "$work/vmlinux" "$work/initramfs.cpio.gz" "$work/vsock_tool" "$work/image/"
[[ -z $vsock_test_missing ]] || echo "$vsock_test_missing" >"$work/image/vsock_test.missing"
cat >"$work/image/stamp" <<EOF
kernel $kernel_pkg $kernel_version ($kver)
busybox-static $(installed_version busybox-static)
socat $(installed_version socat)
vsock_test ${vsock_test_missing:-$source_pkg $source_version}
built $(date -u +%Y-%m-%dT%H:%M:%SZ)
EOF
rm -rf "$out"
mv "$work/image" "$out"
touch "$out"
# Keeps this image and the most recently used others, up to $images_kept:
# another worktree or CI run may still use them (or be about to).
kept=1
while read -r old; do
  [[ $old == "$out" ]] && continue
  if ((kept < images_kept)); then
    kept=$((kept + 1))
    continue
  fi
  log "removing $old (keeping the $images_kept most recently used images)"
  rm -rf "$old"
done < <(find "$cache" -mindepth 1 -maxdepth 1 -type d -name 'guest-*' -printf '%T@ %p\n' | sort -rn | cut -d' ' -f2-)
# Kernel debs of other versions are dead weight once a new image is built.
for old in "$cache"/debs/*.deb; do
  [[ $old == "$deb" || $old == "$source_deb" ]] || rm -f "$old"
done
log "done: $(du -sh "$out" | cut -f1) in $out"
echo "$out"
