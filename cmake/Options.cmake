# Warnings (as errors with STACKEMU_WERROR) and sanitizer flags for our own targets only.
add_library(stackemu_options INTERFACE)
target_compile_options(stackemu_options INTERFACE
  -Wall -Wextra -Wpedantic -Wshadow -Wnon-virtual-dtor -Wcast-align -Wunused
  -Woverloaded-virtual -Wformat=2 -Wimplicit-fallthrough
  # GCC 12 misreads Asio's recycling allocator for coroutine frames as mismatched new/delete.
  # (-Wnull-dereference is left out for the same reason: it fires inside Asio's scheduler.)
  -Wno-mismatched-new-delete)
# A developer setting (scripts/test and CI turn it on): a user's compiler that warns
# differently must never break their build.
if(STACKEMU_WERROR)
  target_compile_options(stackemu_options INTERFACE -Werror)
endif()
# Debian 12's default clang (14) cannot compile us: libstdc++ 12 declares std::expected only
# when __cpp_concepts >= 202002L, for conditionally trivial special members (P0848). clang 16
# implements P0848 but reports 201907L until clang 19, so the value is raised for 16 to 18.
if(CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
  if(CMAKE_CXX_COMPILER_VERSION VERSION_LESS 16)
    message(FATAL_ERROR "clang ${CMAKE_CXX_COMPILER_VERSION} cannot compile stackemu: libstdc++'s "
      "std::expected needs clang 16 or later. On Debian 12: apt-get install clang-16 and "
      "configure with CC=clang-16 CXX=clang++-16.")
  elseif(CMAKE_CXX_COMPILER_VERSION VERSION_LESS 19)
    target_compile_options(stackemu_options INTERFACE -U__cpp_concepts -D__cpp_concepts=202002L)
  endif()
endif()

if(STACKEMU_SANITIZE)
  target_compile_options(stackemu_options INTERFACE
    -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all)
  target_link_options(stackemu_options INTERFACE -fsanitize=address,undefined)
endif()

# libFuzzer: our code carries coverage instrumentation and the sanitizers; only the fuzz/
# executables link the fuzzer's main.
if(STACKEMU_FUZZ)
  if(NOT CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
    message(FATAL_ERROR "STACKEMU_FUZZ needs clang's libFuzzer: configure with CC=clang-16 "
      "CXX=clang++-16 (Debian 12: apt-get install clang-16 libclang-rt-16-dev), or run scripts/fuzz")
  endif()
  target_compile_options(stackemu_options INTERFACE -fsanitize=fuzzer-no-link,address,undefined
    -fno-sanitize-recover=all -fno-omit-frame-pointer)
  target_link_options(stackemu_options INTERFACE -fsanitize=address,undefined)
endif()

# Heavy headers compiled once per target.
set(STACKEMU_PCH <asio.hpp> <nlohmann/json.hpp> <fmt/format.h> <expected> <string> <vector>)
