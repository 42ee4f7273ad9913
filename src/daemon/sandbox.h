// The sandbox the daemon enters once every socket is bound and before any
// guest is served (docs/security.md): optionally drop to an unprivileged user
// (--user), then set PR_SET_NO_NEW_PRIVS and install a seccomp allow-list
// filter (--seccomp) that every thread inherits.
//
// Order matters: privileges are dropped first (setuid/setgid are not on the
// allow-list), and the filter goes in before the worker threads start, so no
// thread ever runs unfiltered.
#pragma once

#include <sys/types.h>

#include <string>
#include <string_view>
#include <vector>

#include "daemon/config.h"

namespace vhost_vsock::daemon {

// Set in the environment to make the daemon call a forbidden syscall
// (execve of a path that does not exist) from a fresh thread once the sandbox
// is in place: under --seccomp it must die of SIGSYS. For tests only.
inline constexpr const char* kSandboxSelfTestEnv = "VUV_SANDBOX_SELFTEST";

// --user: "NAME", "NAME:GROUP", "UID" or "UID:GID" (GROUP may be a name or a
// number). A name without a group takes the user's primary group; a bare UID
// takes GID = UID's primary group if the UID has a passwd entry, else the
// same number. Resolves names through NSS (call before the sandbox). Returns
// false with `error` set when the text is malformed or a name is unknown.
bool parse_user_spec(std::string_view text, uid_t* uid, gid_t* gid, std::string* error);

// The allow-list, by syscall name, as installed (for docs and tests).
// Some entries carry argument conditions: see sandbox.cpp.
std::vector<std::string> seccomp_allowed_syscalls();

// Installs the seccomp filter for the calling process: every thread (TSYNC),
// and every thread created later, inherits it. Sets PR_SET_NO_NEW_PRIVS.
// Throws std::runtime_error if the kernel or libseccomp refuses.
// `metrics_server`: also what the --metrics HTTP server needs.
// `config_reload`: also what a SIGHUP reload of --config needs (binding new
// VMs' sockets, event loops, opening files for reading).
// `vsock_forwarding`: also socket(AF_VSOCK, ...) (forward-cid's connects;
// forward-listen's listeners are bound before the filter, or by a reload).
void install_seccomp_filter(SeccompMode mode, bool metrics_server = false, bool config_reload = false,
                            bool vsock_forwarding = false);

// Gives the socket files to `uid`:`gid` (so the daemon can still remove them
// at exit, even in a sticky directory, and so they keep belonging to whoever
// the daemon runs as), then drops supplementary groups and switches the real,
// effective and saved IDs. Verifies that root cannot be regained. Throws
// std::runtime_error naming the step that failed.
void drop_privileges(uid_t uid, gid_t gid, const std::vector<std::string>& socket_paths);

// Applies `options` (no-op when neither --user nor --seccomp was given) and
// logs what is in force. `socket_paths`: every socket file the daemon created.
// Throws std::runtime_error on failure; the daemon must not serve then.
void apply_sandbox(const SandboxOptions& options, const std::vector<std::string>& socket_paths);

// The test hook behind kSandboxSelfTestEnv; returns only if the syscall was
// not blocked (logged as an error).
void run_sandbox_self_test();

}  // namespace vhost_vsock::daemon
