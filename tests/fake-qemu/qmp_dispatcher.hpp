// One QMP session's protocol logic: negotiation, request checks, commands, replies. No I/O.
#pragma once

#include <optional>
#include <string>

#include "json_reader.hpp"
#include "qemu_json.hpp"
#include "vm.hpp"

namespace stackemu::fake {

// Mirrors monitor/qmp.c and qapi/qmp-dispatch.c of QEMU 7.2: every check, its order and its
// message. Events a command causes reach the VM's subscribers while handle() runs, so a
// caller that queues them as they come and then the reply reproduces QEMU's order.
class qmp_dispatcher {
  public:
    explicit qmp_dispatcher(vm& machine);

    struct response {
        std::string command;         // empty when the request named none
        std::optional<value> id;     // the request's id, when it had one
        std::optional<value> reply;  // the whole reply message; nullopt: nothing to send
    };

    // {"QMP": {"version": ..., "capabilities": [...]}} for this VM's options.
    value greeting() const;
    response handle(const json_reader::item& item);
    bool negotiated() const { return negotiated_; }
    bool oob_enabled() const { return oob_; }

  private:
    result<value> execute(const std::string& command, const value& arguments);
    result<value> qmp_capabilities(const value& arguments);

    vm& vm_;
    bool negotiated_ = false;
    bool oob_ = false;
};

}  // namespace stackemu::fake
