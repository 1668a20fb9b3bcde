// QAPI argument checking with qapi/qobject-input-visitor.c's messages.
#include "argument_reader.hpp"

#include <fmt/format.h>

namespace stackemu::fake {

argument_reader::argument_reader(const value& arguments) : arguments_(arguments) {
}

const value* argument_reader::take(std::string_view name, bool required) {
    if (error_) return nullptr;
    visited_.emplace(name);
    auto it = arguments_.find(std::string(name));
    if (it == arguments_.end()) {
        if (required) error_ = fmt::format("Parameter '{}' is missing", name);
        return nullptr;
    }
    return &*it;
}

void argument_reader::type_error(std::string_view name, std::string_view expected) {
    if (!error_)
        error_ = fmt::format("Invalid parameter type for '{}', expected: {}", name, expected);
}

std::string argument_reader::required_string(std::string_view name) {
    const value* v = take(name, true);
    if (!v) return {};
    if (!v->is_string()) {
        type_error(name, "string");
        return {};
    }
    return v->get<std::string>();
}

std::optional<std::string> argument_reader::optional_string(std::string_view name) {
    const value* v = take(name, false);
    if (!v) return std::nullopt;
    if (!v->is_string()) {
        type_error(name, "string");
        return std::nullopt;
    }
    return v->get<std::string>();
}

std::optional<std::int64_t> argument_reader::optional_int(std::string_view name) {
    const value* v = take(name, false);
    if (!v) return std::nullopt;
    // qnum_get_try_int(): I64, or U64 up to INT64_MAX; never a double.
    if (v->is_number_integer() && !v->is_number_unsigned()) return v->get<std::int64_t>();
    if (v->is_number_unsigned() && v->get<std::uint64_t>() <= INT64_MAX)
        return static_cast<std::int64_t>(v->get<std::uint64_t>());
    type_error(name, "integer");
    return std::nullopt;
}

std::optional<std::vector<std::string>> argument_reader::string_list(std::string_view name,
                                                                     bool required) {
    const value* v = take(name, required);
    if (!v) return std::nullopt;
    if (!v->is_array()) {
        type_error(name, "array");
        return std::nullopt;
    }
    std::vector<std::string> out;
    for (std::size_t i = 0; i < v->size(); ++i) {
        if (!(*v)[i].is_string()) {
            type_error(fmt::format("{}[{}]", name, i), "string");
            return std::nullopt;
        }
        out.push_back((*v)[i].get<std::string>());
    }
    return out;
}

result<void> argument_reader::finish() {
    if (error_) return fail(make_qemu_error("GenericError", *error_));
    std::vector<std::string> leftover;
    for (const auto& key : qdict_order(arguments_))
        if (!visited_.contains(key)) leftover.push_back(key);
    if (leftover.empty()) return {};
    // The visitor collects the members in a GHashTable and names whichever comes first.
    std::vector<std::string> all = qdict_order(arguments_);
    for (const auto& key : ghash_order(all))
        if (!visited_.contains(key))
            return fail(
                make_qemu_error("GenericError", fmt::format("Parameter '{}' is unexpected", key)));
    return {};
}

}  // namespace stackemu::fake
