// Exceptions that reach Python as the matching built-in exception (translated in bindings.cpp).
// Rule: anything a user controls is checked and thrown, never assert()ed or abort()ed.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace vgg {

struct ValueError : std::invalid_argument {  // -> ValueError
  using std::invalid_argument::invalid_argument;
};
struct TypeError : std::runtime_error {  // -> TypeError
  using std::runtime_error::runtime_error;
};
struct MemoryError : std::runtime_error {  // -> MemoryError; the message says how many bytes were asked for
  using std::runtime_error::runtime_error;
};

// "(2, 8, 8, 3)"
std::string shape_str(const std::vector<int64_t>& shape);

// Builds a message from streamable parts: VGG_CHECK(ok, ValueError, "conv2d: ", "x has shape ", ...)
template <typename... Parts> std::string cat(const Parts&... parts) {
  std::ostringstream out;
  (out << ... << parts);
  return out.str();
}

}  // namespace vgg

#define VGG_CHECK(condition, ErrorType, ...)            \
  do {                                                  \
    if (!(condition)) throw ErrorType(::vgg::cat(__VA_ARGS__)); \
  } while (0)
