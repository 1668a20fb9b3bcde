# Every dependency comes from Debian's packages (scripts/setup installs them).
find_package(Threads REQUIRED)
find_package(nlohmann_json 3.11 REQUIRED)
find_package(fmt 9 REQUIRED)
# fmt's compiled part as a static library of ours (src/common/fmt_static.cpp says why); every
# target links stackemu_fmt, never fmt::fmt, so no binary loads libfmt.so.
add_library(stackemu_fmt STATIC ${PROJECT_SOURCE_DIR}/src/common/fmt_static.cpp)
target_include_directories(stackemu_fmt SYSTEM PUBLIC
  $<TARGET_PROPERTY:fmt::fmt,INTERFACE_INCLUDE_DIRECTORIES>)
set_target_properties(stackemu_fmt PROPERTIES POSITION_INDEPENDENT_CODE ON)
find_package(CLI11 2 REQUIRED)
find_package(PkgConfig REQUIRED)
find_package(CURL REQUIRED)
find_package(OpenSSL REQUIRED)
pkg_check_modules(LIBISOFS REQUIRED IMPORTED_TARGET libisofs-1)

# Standalone Asio is header-only and ships no CMake config.
find_path(ASIO_INCLUDE_DIR asio.hpp REQUIRED)
add_library(asio INTERFACE)
target_include_directories(asio SYSTEM INTERFACE ${ASIO_INCLUDE_DIR})
# Asio 1.22 decides between std::aligned_alloc/free and operator new/delete for its handler and
# coroutine-frame memory by testing _GLIBCXX_HAVE_ALIGNED_ALLOC, which is defined only when a
# standard header came before Asio's: translation units then disagree (an ODR violation), and
# memory allocated by one is freed by the other (ASan: alloc-dealloc-mismatch). Decided here, once.
target_compile_definitions(asio INTERFACE ASIO_STANDALONE ASIO_NO_DEPRECATED
  ASIO_HAS_STD_ALIGNED_ALLOC=1)
# Asio 1.22 looks for co_await on clang through __cpp_coroutines, which clang 16 no longer
# defines (it has C++20 coroutines and <coroutine>, which Asio finds through __GNUC__).
if(CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
  target_compile_definitions(asio INTERFACE ASIO_HAS_CO_AWAIT=1)
endif()
target_link_libraries(asio INTERFACE Threads::Threads)

if(STACKEMU_TESTS)
  find_package(Catch2 2 REQUIRED)
  include(Catch)
endif()
