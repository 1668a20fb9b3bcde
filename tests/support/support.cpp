// Anchor translation unit for the test support library.
#include "support/run.hpp"
