// The few human-monitor-command lines stackemu may send, answered as QEMU 7.2's HMP does.
#pragma once

#include <string>
#include <string_view>

#include "vm.hpp"

namespace stackemu::fake {

// Runs one HMP command line against `machine` and returns the monitor's text output
// (CRLF line ends; errors are text too, never a QMP error).
std::string hmp_execute(vm& machine, std::string_view command_line);

}  // namespace stackemu::fake
