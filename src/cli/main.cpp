// stackemu-full: every subcommand. The one-shot `stackemu` (oneshot_main.cpp) runs the light
// ones itself and execs this for the rest, help and unknown words.
#include "cli/subcommands.hpp"

int main(int argc, char** argv) {
    using namespace stackemu::cli;
    return run_cli(argc, argv, all_commands());
}
