#include "cli/output.hpp"

#include <fmt/format.h>

#include <cstdio>

namespace stackemu::cli {

int report(std::string_view command, const error& e) {
    fmt::print(stderr, "stackemu {}: {}\n", command, e.what());
    return exit_error;
}

}  // namespace stackemu::cli
