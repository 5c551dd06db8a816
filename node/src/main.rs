fn main() {
    std::process::exit(tstore_node::cli::main());
}
