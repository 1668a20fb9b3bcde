// The guest-sync-delimited answer scan.
#include "qmp/qga_sync.hpp"

#include <nlohmann/json.hpp>
#include <utility>

namespace stackemu::qmp::qga {

namespace {

bool is_answer(std::string_view text, std::int64_t token) {
    const auto msg = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (!msg.is_object()) return false;
    const auto ret = msg.find("return");
    if (ret == msg.end()) return false;
    // Compared as JSON numbers of the same kind: 2^64-1 must not pass for -1.
    if (ret->is_number_unsigned())
        return token >= 0 && ret->get<std::uint64_t>() == std::uint64_t(token);
    return ret->is_number_integer() && ret->get<std::int64_t>() == token;
}

}  // namespace

sync_reader::sync_reader(std::int64_t token, std::function<void(std::string_view)> observe)
    : token_(token), observe_(std::move(observe)) {
}

bool sync_reader::feed(std::string_view bytes, framer& messages) {
    if (answered_) {
        messages.feed(bytes);
        return true;
    }
    // Segments between sentinels, in order: each sentinel starts a fresh parse.
    for (;;) {
        const auto cut = bytes.find(sync_sentinel);
        if (seen_sentinel_) messages.feed(bytes.substr(0, cut));
        while (seen_sentinel_) {
            auto next = messages.next();
            if (!next) {
                // Garbage after an earlier client's sentinel: wait for the next sentinel.
                messages.reset();
                seen_sentinel_ = false;
                break;
            }
            if (!*next) break;
            if (observe_) observe_(**next);
            if (is_answer(**next, token_)) {
                // Whatever follows, a later sentinel included, belongs to later commands.
                answered_ = true;
                if (cut != std::string_view::npos) messages.feed(bytes.substr(cut));
                return true;
            }
            ++stale_replies_;
        }
        if (cut == std::string_view::npos) return false;
        bytes.remove_prefix(cut + 1);
        messages.reset();
        seen_sentinel_ = true;
    }
}

}  // namespace stackemu::qmp::qga
