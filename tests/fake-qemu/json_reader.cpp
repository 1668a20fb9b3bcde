// A port of QEMU 7.2's JSON lexer state table, token streamer and recursive-descent parser.
#include "json_reader.hpp"

#include <fmt/format.h>

#include <array>
#include <cerrno>
#include <cstdlib>

namespace stackemu::fake {

namespace {

// Lexer states as in json-lexer.c; 0 doubles as JSON_ERROR.
enum lexer_state : std::uint8_t {
    in_error = 0,
    in_recovery,
    in_dq_string_escape,
    in_dq_string,
    in_sq_string_escape,
    in_sq_string,
    in_zero,
    in_exp_digits,
    in_exp_sign,
    in_exp_e,
    in_mantissa,
    in_mantissa_digits,
    in_digits,
    in_sign,
    in_keyword,
    in_start,
    // Terminal token types (JSON_LCURLY etc.), above the states.
    t_lcurly = 100,
    t_rcurly,
    t_lsquare,
    t_rsquare,
    t_colon,
    t_comma,
    t_integer,
    t_float,
    t_keyword,
    t_string,
};
constexpr std::uint8_t lookahead = 0x80;
constexpr std::size_t max_token_size = 64ull << 20;
constexpr std::size_t max_token_count = 2ull << 20;
constexpr long max_nesting = 1 << 10;

using table = std::array<std::array<std::uint8_t, 256>, in_start + 1>;

table build_table() {
    table t{};  // everything else is in_error
    auto range = [&](int state, int lo, int hi, std::uint8_t next) {
        for (int c = lo; c <= hi; ++c)
            t[state][c] = next;
    };
    auto terminal = [&](int state, std::uint8_t tok) { range(state, 0, 0xFF, tok | lookahead); };

    // Skip until a structural character, a control character other than tab, or 0xFE/0xFF.
    range(in_recovery, 0, 0x1F, in_start | lookahead);
    range(in_recovery, 0x20, 0xFD, in_recovery);
    range(in_recovery, 0xFE, 0xFF, in_start | lookahead);
    t[in_recovery]['\t'] = in_recovery;
    for (char c : {'[', ']', '{', '}', ':', ','})
        t[in_recovery][static_cast<unsigned char>(c)] = in_start | lookahead;

    range(in_dq_string_escape, 0x20, 0xFD, in_dq_string);
    range(in_dq_string, 0x20, 0xFD, in_dq_string);
    t[in_dq_string]['\\'] = in_dq_string_escape;
    t[in_dq_string]['"'] = t_string;
    range(in_sq_string_escape, 0x20, 0xFD, in_sq_string);
    range(in_sq_string, 0x20, 0xFD, in_sq_string);
    t[in_sq_string]['\\'] = in_sq_string_escape;
    t[in_sq_string]['\''] = t_string;

    terminal(in_zero, t_integer);
    range(in_zero, '0', '9', in_error);
    t[in_zero]['.'] = in_mantissa;

    terminal(in_exp_digits, t_float);
    range(in_exp_digits, '0', '9', in_exp_digits);
    range(in_exp_sign, '0', '9', in_exp_digits);
    t[in_exp_e]['-'] = in_exp_sign;
    t[in_exp_e]['+'] = in_exp_sign;
    range(in_exp_e, '0', '9', in_exp_digits);
    terminal(in_mantissa_digits, t_float);
    range(in_mantissa_digits, '0', '9', in_mantissa_digits);
    t[in_mantissa_digits]['e'] = in_exp_e;
    t[in_mantissa_digits]['E'] = in_exp_e;
    range(in_mantissa, '0', '9', in_mantissa_digits);

    terminal(in_digits, t_integer);
    range(in_digits, '0', '9', in_digits);
    t[in_digits]['e'] = in_exp_e;
    t[in_digits]['E'] = in_exp_e;
    t[in_digits]['.'] = in_mantissa;
    t[in_sign]['0'] = in_zero;
    range(in_sign, '1', '9', in_digits);

    terminal(in_keyword, t_keyword);
    range(in_keyword, 'a', 'z', in_keyword);

    t[in_start]['"'] = in_dq_string;
    t[in_start]['\''] = in_sq_string;
    t[in_start]['0'] = in_zero;
    range(in_start, '1', '9', in_digits);
    t[in_start]['-'] = in_sign;
    t[in_start]['{'] = t_lcurly;
    t[in_start]['}'] = t_rcurly;
    t[in_start]['['] = t_lsquare;
    t[in_start][']'] = t_rsquare;
    t[in_start][','] = t_comma;
    t[in_start][':'] = t_colon;
    range(in_start, 'a', 'z', in_keyword);
    for (char c : {' ', '\t', '\r', '\n'})
        t[in_start][static_cast<unsigned char>(c)] = in_start;
    return t;
}

const table& lexer_table() {
    static const table t = build_table();
    return t;
}

int cvt4hex(std::string_view s, std::size_t at) {
    int cp = 0;
    for (std::size_t i = 0; i < 4; ++i) {
        if (at + i >= s.size()) return -1;
        const char c = s[at + i];
        cp <<= 4;
        if (c >= '0' && c <= '9')
            cp |= c - '0';
        else if (c >= 'a' && c <= 'f')
            cp |= 10 + c - 'a';
        else if (c >= 'A' && c <= 'F')
            cp |= 10 + c - 'A';
        else
            return -1;
    }
    return cp;
}

bool valid_codepoint(int cp) {
    if (cp > 0x10FFFF) return false;
    if ((cp >= 0xFDD0 && cp <= 0xFDEF) || (cp & 0xFFFE) == 0xFFFE) return false;
    if (cp >= 0xD800 && cp <= 0xDFFF) return false;
    return true;
}

// mod_utf8_encode(): U+0000 becomes C0 80 (modified UTF-8).
void encode_utf8(std::string& out, int cp) {
    if (cp > 0 && cp <= 0x7F) {
        out += static_cast<char>(cp);
    } else if (cp <= 0x7FF) {
        out += static_cast<char>(0xC0 | (cp >> 6));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp <= 0xFFFF) {
        out += static_cast<char>(0xE0 | (cp >> 12));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
        out += static_cast<char>(0xF0 | (cp >> 18));
        out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    }
}

// json-parser.c over one balanced token run. Only the first error counts (parse_error()).
template <typename Token, typename Type>
class parser {
  public:
    explicit parser(const std::vector<Token>& tokens) : tokens_(tokens) {}

    std::optional<value> parse() { return parse_value(); }
    const std::string& error() const { return error_; }

  private:
    const Token* peek() const { return pos_ < tokens_.size() ? &tokens_[pos_] : nullptr; }
    const Token* pop() { return pos_ < tokens_.size() ? &tokens_[pos_++] : nullptr; }
    void fail(const std::string& message) {
        if (error_.empty()) error_ = "JSON parse error, " + message;
    }

    std::optional<value> parse_value() {
        const Token* tok = peek();
        if (!tok) {
            fail("premature EOI");
            return std::nullopt;
        }
        switch (tok->type) {
            case Type::lcurly:
                return parse_object();
            case Type::lsquare:
                return parse_array();
            case Type::integer:
            case Type::floating:
            case Type::string:
                return parse_literal();
            case Type::keyword:
                return parse_keyword();
            default:
                fail("expecting value");
                return std::nullopt;
        }
    }

    bool parse_pair(value& dict) {
        const Token* tok = peek();
        if (!tok) {
            fail("premature EOI");
            return false;
        }
        auto key = parse_value();
        if (!key || !key->is_string()) {
            fail("key is not a string in object");
            return false;
        }
        tok = pop();
        if (!tok) {
            fail("premature EOI");
            return false;
        }
        if (tok->type != Type::colon) {
            fail("missing : in object pair");
            return false;
        }
        auto v = parse_value();
        if (!v) {
            fail("Missing value in dict");
            return false;
        }
        const auto& name = key->template get_ref<const std::string&>();
        if (dict.contains(name)) {
            fail("duplicate key");
            return false;
        }
        dict[name] = std::move(*v);
        return true;
    }

    std::optional<value> parse_object() {
        pop();
        value dict = value::object();
        const Token* tok = peek();
        if (!tok) {
            fail("premature EOI");
            return std::nullopt;
        }
        if (tok->type == Type::rcurly) {
            pop();
            return dict;
        }
        if (!parse_pair(dict)) return std::nullopt;
        for (;;) {
            tok = pop();
            if (!tok) {
                fail("premature EOI");
                return std::nullopt;
            }
            if (tok->type == Type::rcurly) return dict;
            if (tok->type != Type::comma) {
                fail("expected separator in dict");
                return std::nullopt;
            }
            if (!parse_pair(dict)) return std::nullopt;
        }
    }

    std::optional<value> parse_array() {
        pop();
        value list = value::array();
        const Token* tok = peek();
        if (!tok) {
            fail("premature EOI");
            return std::nullopt;
        }
        if (tok->type == Type::rsquare) {
            pop();
            return list;
        }
        for (;;) {
            auto element = parse_value();
            if (!element) {
                fail("expecting value");
                return std::nullopt;
            }
            list.push_back(std::move(*element));
            tok = pop();
            if (!tok) {
                fail("premature EOI");
                return std::nullopt;
            }
            if (tok->type == Type::rsquare) return list;
            if (tok->type != Type::comma) {
                fail("expected separator in list");
                return std::nullopt;
            }
        }
    }

    std::optional<value> parse_keyword() {
        const Token* tok = pop();
        if (tok->text == "true") return value(true);
        if (tok->text == "false") return value(false);
        if (tok->text == "null") return value(nullptr);
        fail(fmt::format("invalid keyword '{}'", tok->text));
        return std::nullopt;
    }

    std::optional<value> parse_literal() {
        const Token* tok = pop();
        if (tok->type == Type::string) return parse_string(tok->text);
        const char* text = tok->text.c_str();
        if (tok->type == Type::integer) {
            // I64 if it fits, else U64 for non-negative values, else double (parse_literal()).
            errno = 0;
            char* end = nullptr;
            const long long i = std::strtoll(text, &end, 10);
            if (errno == 0) return value(static_cast<std::int64_t>(i));
            if (text[0] != '-') {
                errno = 0;
                const unsigned long long u = std::strtoull(text, &end, 10);
                if (errno == 0) return value(static_cast<std::uint64_t>(u));
            }
        }
        return value(std::strtod(text, nullptr));
    }

    std::optional<value> parse_string(std::string_view tok) {
        const char quote = tok[0];
        std::string out;
        std::size_t p = 1;
        while (p < tok.size() && tok[p] != quote) {
            if (tok[p] == '\\') {
                const std::size_t begin = p++;
                const char c = tok[p++];
                switch (c) {
                    case '"':
                        out += '"';
                        break;
                    case '\'':
                        out += '\'';
                        break;
                    case '\\':
                        out += '\\';
                        break;
                    case '/':
                        out += '/';
                        break;
                    case 'b':
                        out += '\b';
                        break;
                    case 'f':
                        out += '\f';
                        break;
                    case 'n':
                        out += '\n';
                        break;
                    case 'r':
                        out += '\r';
                        break;
                    case 't':
                        out += '\t';
                        break;
                    case 'u': {
                        int cp = cvt4hex(tok, p);
                        p += 4;
                        if (cp >= 0xD800 && cp <= 0xDBFF && p + 1 < tok.size() && tok[p] == '\\' &&
                            tok[p + 1] == 'u') {
                            cp = 0x10000 + ((cp & 0x3FF) << 10);
                            const int trailing = cvt4hex(tok, p + 2);
                            if (trailing >= 0xDC00 && trailing <= 0xDFFF) {
                                cp |= trailing & 0x3FF;
                                p += 6;
                            } else {
                                cp = -1;
                            }
                        }
                        if (!valid_codepoint(cp)) {
                            const auto shown = tok.substr(begin, std::min(p, tok.size()) - begin);
                            fail(fmt::format("{} is not a valid Unicode character", shown));
                            return std::nullopt;
                        }
                        encode_utf8(out, cp);
                        break;
                    }
                    default:
                        fail("invalid escape sequence in string");
                        return std::nullopt;
                }
                continue;
            }
            std::size_t length = 0;
            const int cp = mod_utf8_codepoint(tok.substr(p), length);
            if (cp < 0) {
                fail("invalid UTF-8 sequence in string");
                return std::nullopt;
            }
            p += length;
            encode_utf8(out, cp);
        }
        return value(std::move(out));
    }

    const std::vector<Token>& tokens_;
    std::size_t pos_ = 0;
    std::string error_;
};

}  // namespace

void json_reader::reset() {
    state_ = in_start;
    token_.clear();
    tokens_.clear();
    brace_count_ = bracket_count_ = 0;
    token_size_ = 0;
}

void json_reader::feed(std::string_view bytes, std::vector<item>& out) {
    if (state_ == 0) state_ = in_start;
    for (char c : bytes)
        feed_char(static_cast<unsigned char>(c), out);
}

void json_reader::feed_char(unsigned char c, std::vector<item>& out) {
    const auto& t = lexer_table();
    bool consumed = false;
    while (!consumed) {
        std::uint8_t next = t[state_][c];
        consumed = !(next & lookahead);
        next &= static_cast<std::uint8_t>(~lookahead);
        if (consumed) token_ += static_cast<char>(c);
        switch (next) {
            case t_lcurly:
                process_token(token_type::lcurly, out);
                break;
            case t_rcurly:
                process_token(token_type::rcurly, out);
                break;
            case t_lsquare:
                process_token(token_type::lsquare, out);
                break;
            case t_rsquare:
                process_token(token_type::rsquare, out);
                break;
            case t_colon:
                process_token(token_type::colon, out);
                break;
            case t_comma:
                process_token(token_type::comma, out);
                break;
            case t_integer:
                process_token(token_type::integer, out);
                break;
            case t_float:
                process_token(token_type::floating, out);
                break;
            case t_keyword:
                process_token(token_type::keyword, out);
                break;
            case t_string:
                process_token(token_type::string, out);
                break;
            default:
                break;
        }
        if (next >= t_lcurly || next == in_start) {
            token_.clear();
            next = in_start;
        } else if (next == in_error) {
            process_token(token_type::error, out);
            next = in_recovery;
            token_.clear();
        } else if (next == in_recovery) {
            token_.clear();
        }
        state_ = next;
    }
    if (token_.size() > max_token_size) {
        // QEMU hands the oversized partial token on as whatever its state maps to; an error.
        process_token(token_type::error, out);
        token_.clear();
        state_ = in_start;
    }
}

void json_reader::process_token(token_type type, std::vector<item>& out) {
    auto emit_error = [&](std::string message) {
        out.push_back(item{std::nullopt, std::move(message)});
        brace_count_ = bracket_count_ = 0;
        tokens_.clear();
        token_size_ = 0;
    };
    switch (type) {
        case token_type::lcurly:
            ++brace_count_;
            break;
        case token_type::rcurly:
            --brace_count_;
            break;
        case token_type::lsquare:
            ++bracket_count_;
            break;
        case token_type::rsquare:
            --bracket_count_;
            break;
        case token_type::error:
            emit_error(fmt::format("JSON parse error, stray '{}'", token_));
            return;
        default:
            break;
    }
    if (token_size_ + token_.size() + 1 > max_token_size) {
        emit_error("JSON token size limit exceeded");
        return;
    }
    if (tokens_.size() + 1 > max_token_count) {
        emit_error("JSON token count limit exceeded");
        return;
    }
    if (bracket_count_ + brace_count_ > max_nesting) {
        emit_error("JSON nesting depth limit exceeded");
        return;
    }
    tokens_.push_back(token{type, token_});
    token_size_ += token_.size();
    if ((brace_count_ > 0 || bracket_count_ > 0) && brace_count_ >= 0 && bracket_count_ >= 0)
        return;

    parser<token, token_type> p(tokens_);
    auto result = p.parse();
    if (!p.error().empty()) {
        emit_error(p.error());
        return;
    }
    out.push_back(item{std::move(result), {}});
    brace_count_ = bracket_count_ = 0;
    tokens_.clear();
    token_size_ = 0;
}

}  // namespace stackemu::fake
