// vuv_sim_guest: the guest-driver simulator as a command-line program, for
// tests that cannot link it, such as the e2e forwarding group, which runs the
// daemon and this tool inside a Linux guest (tests/e2e/cases_forward.py).
// It connects to the daemon's vhost-user socket like a VMM plus a guest, then
// runs its steps in order and exits 0 only if every one passed:
//
//   connect-echo:PORT:TEXT   connect to CID 2 port PORT, send TEXT, expect TEXT back
//   connect-refused:PORT     connect to CID 2 port PORT, expect an RST within 5 s
//   accept-echo:PORT:TEXT    listen on PORT, print "listening PORT", accept one host
//                            connection within 60 s, expect TEXT, send TEXT back
//
// One line per step on stdout: "<step> ok ..." or "<step> FAILED: why".
#include <chrono>
#include <cstdio>
#include <exception>
#include <optional>
#include <string>
#include <vector>

#include "testing/vsock_driver.h"

namespace {

using vhost_vsock::testing::GuestVsockDriver;
using vhost_vsock::testing::Millis;
using vhost_vsock::testing::Stream;

struct Step {
  std::string kind;
  uint32_t port = 0;
  std::string text;
};

bool parse_step(const std::string& arg, Step* step) {
  const size_t first = arg.find(':');
  if (first == std::string::npos) return false;
  step->kind = arg.substr(0, first);
  const size_t second = arg.find(':', first + 1);
  try {
    step->port = static_cast<uint32_t>(std::stoul(arg.substr(first + 1, second - first - 1)));
  } catch (const std::exception&) {
    return false;
  }
  if (second != std::string::npos) step->text = arg.substr(second + 1);
  const bool needs_text = step->kind != "connect-refused";
  return (step->kind == "connect-echo" || step->kind == "connect-refused" || step->kind == "accept-echo") &&
         needs_text == !step->text.empty();
}

// Sends the text (or not), expects it back; "" or why not.
std::string echo(Stream& stream, const std::string& text, bool send_first) {
  if (send_first && !stream.send(text)) return "send failed";
  const std::string got = stream.recv_exactly(text.size(), Millis(10000));
  if (got != text) return "received '" + got + "', want '" + text + "'";
  if (!send_first && !stream.send(text)) return "send failed";
  return "";
}

std::string run_step(GuestVsockDriver& guest, const Step& step) {
  if (step.kind == "accept-echo") {
    guest.listen(step.port);
    std::printf("listening %u\n", step.port);
    std::fflush(stdout);
    std::optional<Stream> accepted = guest.accept(step.port, Millis(60000));
    if (!accepted) return "no host connection within 60 s";
    std::string failure = echo(*accepted, step.text, false);
    accepted->close();
    return failure;
  }
  const auto start = std::chrono::steady_clock::now();
  Stream stream = guest.connect(step.port, Millis(5000));
  const auto ms = std::chrono::duration_cast<Millis>(std::chrono::steady_clock::now() - start).count();
  if (step.kind == "connect-refused") {
    if (stream.refused()) {
      std::printf("  (RST after %lld ms)\n", static_cast<long long>(ms));
      return "";
    }
    return stream.established() ? "established, want an RST" : "no answer within 5 s, want an RST";
  }
  if (!stream.established()) return stream.refused() ? "refused (RST)" : "no answer within 5 s";
  std::string failure = echo(stream, step.text, true);
  stream.close();
  return failure;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s VHOST_USER_SOCKET STEP...  (steps: see sim_guest_tool.cpp)\n", argv[0]);
    return 2;
  }
  std::vector<Step> steps;
  for (int i = 2; i < argc; ++i) {
    Step step;
    if (!parse_step(argv[i], &step)) {
      std::fprintf(stderr, "bad step '%s'\n", argv[i]);
      return 2;
    }
    steps.push_back(step);
  }
  try {
    GuestVsockDriver guest(argv[1]);
    std::printf("sim guest cid %llu up\n", static_cast<unsigned long long>(guest.guest_cid()));
    bool all_ok = true;
    for (size_t i = 0; i < steps.size(); ++i) {
      const std::string failure = run_step(guest, steps[i]);
      std::printf("%s %s%s\n", argv[i + 2], failure.empty() ? "ok" : "FAILED: ", failure.c_str());
      std::fflush(stdout);
      all_ok = all_ok && failure.empty();
    }
    for (const std::string& violation : guest.violations()) {
      std::printf("device violation: %s\n", violation.c_str());
      all_ok = false;
    }
    return all_ok ? 0 : 1;
  } catch (const std::exception& error) {
    std::printf("sim guest failed: %s\n", error.what());
    return 1;
  }
}
