# Warnings (as errors) and sanitizer flags for our own targets only.
add_library(stackemu_options INTERFACE)
target_compile_options(stackemu_options INTERFACE
  -Wall -Wextra -Wpedantic -Wshadow -Wnon-virtual-dtor -Wcast-align -Wunused
  -Woverloaded-virtual -Wformat=2 -Wimplicit-fallthrough
  # GCC 12 misreads Asio's recycling allocator for coroutine frames as mismatched new/delete.
  # (-Wnull-dereference is left out for the same reason: it fires inside Asio's scheduler.)
  -Wno-mismatched-new-delete
  -Werror)
if(STACKEMU_SANITIZE)
  target_compile_options(stackemu_options INTERFACE
    -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined)
  target_link_options(stackemu_options INTERFACE -fsanitize=address,undefined)
endif()

# Heavy headers compiled once per target.
set(STACKEMU_PCH <asio.hpp> <nlohmann/json.hpp> <fmt/format.h> <expected> <string> <vector>)
