// What bench_sim reads about another process (the daemon) from /proc:
// CPU time, syscall counts, wake-ups and resident memory.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <utility>

namespace vhost_vsock::bench {

// utime + stime, from /proc/<pid>/stat.
double process_cpu_seconds(pid_t pid);

// Read-type and write-type syscalls (read/readv/recvmsg..., write/writev/
// sendmsg...) of a whole process, from /proc/<pid>/io; eventfd kicks and
// interrupts count too.
std::pair<uint64_t, uint64_t> process_syscalls(pid_t pid);

// Voluntary context switches summed over a process's threads: each is a
// sleep in epoll_wait (or a blocking call) followed by a wake-up.
uint64_t process_voluntary_switches(pid_t pid);

// Involuntary ones: the scheduler took the CPU away, typically for a thread
// the process had just woken (an eventfd call, a socket write).
uint64_t process_preemptions(pid_t pid);

// VmRSS in KiB, from /proc/<pid>/status (0 if the process is gone).
uint64_t vm_rss_kib(pid_t pid);

}  // namespace vhost_vsock::bench
