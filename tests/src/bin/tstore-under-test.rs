//! The `tstore` binary, built in this package for the tests to run.
fn main() {
    std::process::exit(tstore_node::cli::main());
}
