// JSON exactly as QEMU 7.2 writes it: QDict hash order, ", " and ": ", \uXXXX escapes, %.17g.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace stackemu::fake {

// QMP values. Objects keep insertion order, which must be QAPI's field order: QEMU's QDict
// iterates by hash bucket and, inside a bucket, newest first, so insertion order decides ties.
using value = nlohmann::ordered_json;

// QEMU's qobject_to_json(): compact `{"a": 1, "b": [1, 2]}`; with `pretty`, the layout of a
// monitor with pretty=on (4-space indent, "\n" line ends; the monitor turns them into CRLF).
std::string to_qemu_json(const value& v, bool pretty = false);

// The order in which QEMU's qdict_first()/qdict_next() visit the keys of object `v`.
std::vector<std::string> qdict_order(const value& v);

// The order in which a GHashTable (g_str_hash, glib 2.74) built from `keys` (inserted in that
// order) iterates, which is how QEMU's input visitor picks the "unexpected" parameter it
// reports. Exact for up to 7 keys (the table never resizes); larger sets keep `keys` order.
std::vector<std::string> ghash_order(const std::vector<std::string>& keys);

// Decodes one modified-UTF-8 code point as QEMU's mod_utf8_codepoint() does: -1 when invalid.
int mod_utf8_codepoint(std::string_view s, std::size_t& length);

}  // namespace stackemu::fake
