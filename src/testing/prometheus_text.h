// A strict reader of the Prometheus text exposition format (0.0.4) for
// tests: written from the format's description, independent of the
// prometheus-cpp serializer it checks. Header-only.
#pragma once

#include <cctype>
#include <cstdlib>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace vhost_vsock::testing {

struct PrometheusSample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};

struct PrometheusText {
  std::vector<PrometheusSample> samples;
  std::map<std::string, std::string> types;  // family -> counter/gauge/...
  std::vector<std::string> errors;           // empty when the text is valid

  // The value of the one sample with this name whose labels include `match`; -1 if none, -2 if several.
  [[nodiscard]] double value(std::string_view name, const std::map<std::string, std::string>& match = {}) const {
    double found = -1;
    int hits = 0;
    for (const auto& sample : samples) {
      if (sample.name != name) continue;
      bool all = true;
      for (const auto& [key, wanted] : match) {
        auto it = sample.labels.find(key);
        all = all && it != sample.labels.end() && it->second == wanted;
      }
      if (all) {
        found = sample.value;
        ++hits;
      }
    }
    return hits > 1 ? -2 : found;
  }
};

namespace prometheus_detail {

inline bool is_name(std::string_view s, bool label) {
  if (s.empty()) return false;
  for (size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    const bool ok = std::isalpha(static_cast<unsigned char>(c)) || c == '_' || (c == ':' && !label) ||
                    (i > 0 && std::isdigit(static_cast<unsigned char>(c)));
    if (!ok) return false;
  }
  return true;
}

// Parses `{a="x",b="y"}` at `pos`; advances past '}'.
inline bool parse_labels(std::string_view line, size_t& pos, std::map<std::string, std::string>& out) {
  ++pos;  // '{'
  while (pos < line.size() && line[pos] != '}') {
    const size_t eq = line.find('=', pos);
    if (eq == std::string_view::npos) return false;
    const std::string key(line.substr(pos, eq - pos));
    if (!is_name(key, true) || eq + 1 >= line.size() || line[eq + 1] != '"') return false;
    std::string value;
    size_t i = eq + 2;
    for (; i < line.size() && line[i] != '"'; ++i) {
      if (line[i] == '\\') {
        if (++i >= line.size()) return false;
        const char e = line[i];
        if (e != '\\' && e != '"' && e != 'n') return false;
        value += e == 'n' ? '\n' : e;
      } else {
        value += line[i];
      }
    }
    if (i >= line.size() || !out.emplace(key, value).second) return false;
    pos = i + 1;
    if (pos < line.size() && line[pos] == ',') ++pos;
  }
  if (pos >= line.size()) return false;
  ++pos;  // '}'
  return true;
}

}  // namespace prometheus_detail

inline PrometheusText parse_prometheus_text(std::string_view text) {
  using namespace prometheus_detail;
  PrometheusText out;
  std::set<std::string> finished;  // families whose samples ended (a family must be contiguous)
  std::string current;
  size_t line_no = 0;
  while (!text.empty()) {
    const size_t nl = text.find('\n');
    if (nl == std::string_view::npos) {
      out.errors.push_back("the text does not end with a newline");
      break;
    }
    const std::string_view line = text.substr(0, nl);
    text.remove_prefix(nl + 1);
    ++line_no;
    const auto fail = [&out, line_no](std::string_view what, std::string_view detail = {}) {
      std::string error = "line ";
      error += std::to_string(line_no);
      error += ": ";
      error += what;
      error += detail;
      out.errors.push_back(std::move(error));
    };
    if (line.empty()) continue;
    if (line.rfind("# TYPE ", 0) == 0 || line.rfind("# HELP ", 0) == 0) {
      const std::string_view rest = line.substr(7);
      const std::string name(rest.substr(0, rest.find(' ')));
      if (!is_name(name, false)) fail("bad metric name in comment");
      if (line[2] == 'T') {
        const std::string type(rest.substr(rest.find(' ') + 1));
        if (type != "counter" && type != "gauge" && type != "untyped" && type != "summary" && type != "histogram") {
          fail("unknown type ", type);
        }
        if (!out.types.emplace(name, type).second) fail("second TYPE for ", name);
      }
      continue;
    }
    if (line.front() == '#') continue;
    PrometheusSample sample;
    size_t pos = 0;
    while (pos < line.size() && line[pos] != '{' && line[pos] != ' ') ++pos;
    sample.name = std::string(line.substr(0, pos));
    if (!is_name(sample.name, false)) fail("bad metric name ", sample.name);
    if (pos < line.size() && line[pos] == '{' && !parse_labels(line, pos, sample.labels)) {
      fail("bad labels");
      continue;
    }
    if (pos >= line.size() || line[pos] != ' ') {
      fail("no value");
      continue;
    }
    const std::string value(line.substr(pos + 1, line.find(' ', pos + 1) - pos - 1));
    char* end = nullptr;
    sample.value = std::strtod(value.c_str(), &end);
    if (value.empty() || *end != '\0') fail("bad value ", value);
    if (sample.name != current) {
      if (finished.count(sample.name)) fail("family not contiguous: ", sample.name);
      if (!current.empty()) finished.insert(current);
      current = sample.name;
    }
    if (!out.types.count(sample.name)) fail("no TYPE line before ", sample.name);
    out.samples.push_back(std::move(sample));
  }
  return out;
}

}  // namespace vhost_vsock::testing
