// The QMP commands QEMU 7.2 (Debian's qemu-system-x86_64) lists in query-commands.
#pragma once

#include <span>
#include <string_view>

namespace stackemu::fake {

// In the order query-commands returns them.
std::span<const std::string_view> qemu_commands();
bool is_qemu_command(std::string_view name);
// Commands declared with 'allow-oob': true.
bool allows_oob(std::string_view name);

}  // namespace stackemu::fake
