# Warnings (as errors) and sanitizer flags for our own targets only.
add_library(stackemu_options INTERFACE)
target_compile_options(stackemu_options INTERFACE
  -Wall -Wextra -Wpedantic -Wshadow -Wnon-virtual-dtor -Wcast-align -Wunused
  -Woverloaded-virtual -Wnull-dereference -Wformat=2 -Wimplicit-fallthrough
  -Werror)
if(STACKEMU_SANITIZE)
  target_compile_options(stackemu_options INTERFACE
    -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined)
  target_link_options(stackemu_options INTERFACE -fsanitize=address,undefined)
endif()

# Heavy headers compiled once per target.
set(STACKEMU_PCH <asio.hpp> <nlohmann/json.hpp> <fmt/format.h> <expected> <string> <vector>)
