// flashd: command-line entry point. Parsing and work live in daemon/cli.
#include "daemon/cli/commands.h"

int main(int argc, char** argv) { return flashd::cli::Main(argc, argv); }
