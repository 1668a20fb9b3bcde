// Readable failure messages for result<T> in test assertions.
#pragma once

#include <string>

#include "common/error.hpp"

namespace stackemu::test {

template <typename T>
std::string describe(const result<T>& r) {
    if (r) return "ok";
    return std::string(to_string(r.error().code)) + ": " + r.error().what();
}

}  // namespace stackemu::test

// REQUIRE_OK(r): fails with the error's code and text when r holds an error.
// Never put co_await inside a Catch2 v2 assertion: under GCC it evaluates its argument twice
// (CATCH_INTERNAL_IGNORE_BUT_WARN wraps it in __builtin_constant_p).
#define REQUIRE_OK(r) REQUIRE(::stackemu::test::describe(r) == "ok")
#define CHECK_OK(r) CHECK(::stackemu::test::describe(r) == "ok")
